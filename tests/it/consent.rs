//! Consent: keywords in many languages through the real webhook path on both logs,
//! the consent fixtures (STOP, START, the promotions button, `user_preferences`, a
//! sentence, a 131050 failure), suspected opt-outs confirmed and dismissed, manual
//! changes, custom keywords, read-your-writes after a STOP's 200, and a rebuild that
//! gives the same state.

use std::sync::Arc;

use reqwest::StatusCode;
use serde_json::{json, Value};
use wabridge::dev::webhook::{build, Kind, WebhookSpec};
use wabridge_events::StreamKind;
use wabridge_projections::views::consent::Consent;

use crate::support::app::{assert_problem, fixture, spawn_app, DbKind, LogKind, TestApp};

const WABA: &str = "300100200300400";
const NUMBER: &str = "700800900100200";

/// What a message should do to its sender's consent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Want {
    /// Opted out of everything.
    Out,
    /// Opted back in (the row is preceded by a STOP from the same contact).
    In,
    /// A help request.
    Help,
    /// A suspected opt-out, for a person.
    Suspected,
    /// Nothing at all.
    Nothing,
}

/// At least 60 inbound texts with their outcome: keywords in each language, near
/// misses, emoji, mixed case, accents and surrounding punctuation.
const TABLE: &[(&str, Want)] = &[
    // English opt-outs, as the issue lists them
    ("STOP", Want::Out),
    ("stop", Want::Out),
    ("  Stop ", Want::Out),
    ("STOP!", Want::Out),
    ("\"stop\"", Want::Out),
    ("Stop 🛑", Want::Out),
    ("*STOP*", Want::Out),
    ("StOp.", Want::Out),
    ("STOPALL", Want::Out),
    ("UNSUBSCRIBE", Want::Out),
    ("Unsubscribe.", Want::Out),
    ("CANCEL", Want::Out),
    ("end", Want::Out),
    ("QUIT", Want::Out),
    ("REVOKE", Want::Out),
    ("OPTOUT", Want::Out),
    ("OPT OUT", Want::Out),
    ("opt-out", Want::Out),
    // other languages
    ("BAJA", Want::Out),
    ("¡Baja!", Want::Out),
    ("darme de baja", Want::Out),
    ("PARAR", Want::Out),
    ("Sair", Want::Out),
    ("descadastrar", Want::Out),
    ("ARRÊT", Want::Out),
    ("arret", Want::Out),
    ("«Arrêt»", Want::Out),
    ("désabonner", Want::Out),
    ("STOPP", Want::Out),
    ("Abmelden", Want::Out),
    ("aufhören", Want::Out),
    ("DISISCRIVIMI", Want::Out),
    ("annulla iscrizione", Want::Out),
    ("BERHENTI", Want::Out),
    ("unreg", Want::Out),
    // opt-ins
    ("START", Want::In),
    ("yes", Want::In),
    ("UNSTOP", Want::In),
    ("Comenzar", Want::In),
    ("começar", Want::In),
    ("COMMENCER", Want::In),
    ("starten", Want::In),
    ("ISCRIVIMI", Want::In),
    ("MULAI", Want::In),
    // help
    ("HELP", Want::Help),
    ("info", Want::Help),
    ("Ayuda", Want::Help),
    ("AJUDA", Want::Help),
    ("aide", Want::Help),
    ("Hilfe", Want::Help),
    ("AIUTO", Want::Help),
    ("bantuan", Want::Help),
    // inside a sentence: for a person
    ("please stop sending me these", Want::Suspected),
    ("pls unsubscribe me", Want::Suspected),
    ("quiero darme de baja de esta lista", Want::Suspected),
    ("je veux me désabonner", Want::Suspected),
    ("STOP?", Want::Suspected),
    // near misses: nothing
    ("stopwatch", Want::Nothing),
    ("nonstop", Want::Nothing),
    ("STOPS", Want::Nothing),
    ("unstoppable", Want::Nothing),
    ("I can't stop laughing", Want::Nothing),
    ("bus stop", Want::Nothing),
    ("cancel my appointment", Want::Nothing),
    ("🛑", Want::Nothing),
    ("!!!", Want::Nothing),
    ("Sí", Want::Nothing),
    ("no", Want::Nothing),
    ("CANCELAR", Want::Nothing),
    ("Hello, what time do you open?", Want::Nothing),
];

/// A sender per row (distinct contacts, valid E.164 digits).
fn sender(i: usize) -> String {
    format!("4477009{:05}", 10_000 + i)
}

fn text_webhook(from: &str, text: &str, wamid: &str) -> Vec<u8> {
    crate::support::app::text_webhook_to(NUMBER, WABA, from, text, wamid)
}

/// Posts a signed webhook; it must be answered 200.
pub(crate) async fn post_ok(app: &TestApp, body: &[u8]) {
    let r = app.signed_webhook(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

async fn consent_of(app: &TestApp, key: &str, contact: &str) -> Value {
    let r = app
        .get(
            &format!("/v1/workspaces/acme/contacts/{contact}/consent"),
            key,
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.json
}

/// The consent event types the log holds for a contact, in order.
async fn consent_events(app: &TestApp, contact: &str) -> Vec<String> {
    let mut out = vec![];
    for t in [
        "contact.opted_out",
        "contact.opted_in",
        "contact.help_requested",
        "contact.optout_suspected",
    ] {
        for e in app.events_of(Some("acme"), t).await {
            let d: Value = serde_json::from_slice(&e.payload).unwrap();
            if d["contact"]["wa_id"] == contact {
                out.push((e.seq, t.to_string()));
            }
        }
    }
    out.sort();
    out.into_iter().map(|(_, t)| t).collect()
}

async fn setup(log: LogKind, db: DbKind) -> (TestApp, String) {
    let app = spawn_app(log, db).await;
    let key = app.workspace("acme").await;
    app.claim("acme", NUMBER, WABA).await;
    (app, key)
}

async fn keyword_table(log: LogKind, db: DbKind) {
    assert!(TABLE.len() >= 60, "the table has {} rows", TABLE.len());
    let (app, key) = setup(log, db).await;
    for (i, (text, want)) in TABLE.iter().enumerate() {
        let from = sender(i);
        if *want == Want::In {
            post_ok(&app, &text_webhook(&from, "STOP", &format!("wamid.pre{i}"))).await;
        }
        post_ok(&app, &text_webhook(&from, text, &format!("wamid.row{i}"))).await;
    }
    app.settle().await;
    let mut wrong = vec![];
    for (i, (text, want)) in TABLE.iter().enumerate() {
        let from = sender(i);
        let c = consent_of(&app, &key, &from).await;
        let events = consent_events(&app, &from).await;
        let (opted_out, expected_events): (bool, Vec<&str>) = match want {
            Want::Out => (true, vec!["contact.opted_out"]),
            Want::In => (false, vec!["contact.opted_out", "contact.opted_in"]),
            Want::Help => (false, vec!["contact.help_requested"]),
            Want::Suspected => (false, vec!["contact.optout_suspected"]),
            Want::Nothing => (false, vec![]),
        };
        if c["opted_out"] != opted_out || events != expected_events {
            wrong.push(format!(
                "{text:?}: want {want:?}, got opted_out={} events={events:?}",
                c["opted_out"]
            ));
        }
        if *want == Want::Out {
            let h = &c["history"][0];
            assert_eq!(h["action"], "opt_out", "{c}");
            assert_eq!(h["scope"], "all", "{c}");
            assert_eq!(h["source"]["kind"], "keyword", "{c}");
            assert_eq!(h["source"]["message_id"], format!("wamid.row{i}"), "{c}");
            assert!(h["source"]["keyword"].is_string(), "{c}");
            assert!(c["opted_out_since"].is_string(), "{c}");
        }
    }
    assert!(wrong.is_empty(), "misclassified:\n{}", wrong.join("\n"));
    // The suspicions are listed for a person.
    let r = app
        .get("/v1/workspaces/acme/opt-outs?status=suspected", &key)
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let n = TABLE.iter().filter(|(_, w)| *w == Want::Suspected).count();
    assert_eq!(r.json["items"].as_array().unwrap().len(), n, "{}", r.json);
    // And the opted-out contacts, paginated.
    let outs = TABLE.iter().filter(|(_, w)| *w == Want::Out).count();
    let mut seen = 0;
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/workspaces/acme/opt-outs?scope=all&limit=10&cursor={c}"),
            None => "/v1/workspaces/acme/opt-outs?scope=all&limit=10".into(),
        };
        let r = app.get(&path, &key).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.text);
        seen += r.json["items"].as_array().unwrap().len();
        match r.json["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, outs);
    rebuild_matches(&app, db).await;
}

#[tokio::test]
async fn keyword_table_embedded() {
    keyword_table(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn keyword_table_jetstream() {
    keyword_table(LogKind::JetStream, DbKind::Postgres).await;
}

async fn rebuild_matches(app: &TestApp, db: DbKind) {
    crate::support::app::rebuild_matches(app, db, Arc::new(Consent)).await;
}

#[tokio::test]
async fn the_consent_fixtures() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;

    // STOP (with spaces around it), then START.
    post_ok(&app, &fixture("inbound_stop.json")).await;
    let c = consent_of(&app, &key, "447700900123").await;
    assert_eq!(c["opted_out"], true, "{c}");
    assert_eq!(c["history"][0]["source"]["keyword"], "STOP", "{c}");
    assert_eq!(c["history"][0]["source"]["language"], "en", "{c}");
    assert_eq!(
        c["history"][0]["source"]["message_id"],
        "wamid.HBgMNDQ3NzAwOTAwMTIzFQIAEhgWM0VCMEMwMDAwMDAwMDAwMDAwMDAyAA=="
    );
    assert_eq!(c["history"][0]["actor"], "system:webhook_processor", "{c}");
    // The proof: the raw webhook that carried the STOP, with Meta's signature.
    let raw_seq = c["history"][0]["source"]["webhook_seq"]
        .as_u64()
        .expect("webhook_seq");
    let raw = app
        .app
        .ctx
        .log
        .read(
            StreamKind::Raw,
            wabridge_events::ReadFrom::Seq(raw_seq),
            None,
            1,
        )
        .await
        .unwrap();
    assert_eq!(raw[0].seq, raw_seq);
    assert_eq!(&raw[0].payload[..], &fixture("inbound_stop.json")[..]);
    assert!(raw[0].envelope.signature.is_some());
    assert_eq!(c["history"][0]["at"], "2026-01-01T00:00:50.000000Z", "{c}");
    // A redelivery of the same STOP does not add to the history.
    post_ok(&app, &fixture("inbound_stop.json")).await;
    post_ok(&app, &fixture("inbound_start.json")).await;
    let c = consent_of(&app, &key, "447700900123").await;
    assert_eq!(c["opted_out"], false, "{c}");
    assert_eq!(c["opted_out_since"], Value::Null, "{c}");
    let actions: Vec<&str> = c["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["opt_out", "opt_in"], "{c}");

    // The localised "Stop promotions" button: marketing only.
    post_ok(&app, &fixture("inbound_button_stop_promotions.json")).await;
    let c = consent_of(&app, &key, "5521977776666").await;
    assert_eq!(
        (c["opted_out"].clone(), c["marketing_opted_out"].clone()),
        (json!(false), json!(true)),
        "{c}"
    );
    assert_eq!(c["source"]["kind"], "button", "{c}");
    assert_eq!(c["source"]["keyword"], "Parar promoções", "{c}");
    assert_eq!(c["history"][0]["scope"], "marketing", "{c}");

    // user_preferences stop: marketing only, from Meta's own setting.
    post_ok(&app, &fixture("user_preferences_stop.json")).await;
    let c = consent_of(&app, &key, "447700900126").await;
    assert_eq!(c["marketing_opted_out"], true, "{c}");
    assert_eq!(c["opted_out"], false, "{c}");
    assert_eq!(c["source"]["kind"], "preference", "{c}");

    // A failed status with 131050: marketing only, from the delivery error.
    post_ok(&app, &fixture("statuses_delivered_and_failed.json")).await;
    app.settle().await;
    let failed = app.events_of(Some("acme"), "contact.opted_out").await;
    let by_error: Vec<Value> = failed
        .iter()
        .map(|e| serde_json::from_slice::<Value>(&e.payload).unwrap())
        .filter(|d| d["source"]["kind"] == "delivery_error")
        .collect();
    assert_eq!(by_error.len(), 1, "{by_error:?}");
    assert_eq!(by_error[0]["scope"], "marketing");
    let who = by_error[0]["contact"]["wa_id"]
        .as_str()
        .unwrap()
        .to_string();
    let c = consent_of(&app, &key, &who).await;
    assert_eq!(c["marketing_opted_out"], true, "{c}");
    assert_eq!(c["source"]["keyword"], "131050", "{c}");

    // The sentence: suspected, not opted out; listed for a person.
    post_ok(&app, &fixture("inbound_stop_sentence.json")).await;
    let c = consent_of(&app, &key, "447700900125").await;
    assert_eq!(c["opted_out"], false, "{c}");
    let r = app
        .get("/v1/workspaces/acme/opt-outs?status=suspected", &key)
        .await;
    let items = r.json["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "{}", r.json);
    assert_eq!(items[0]["text"], "please stop sending me these");
    assert_eq!(items[0]["contact_id"], "447700900125");
    let id = items[0]["id"].as_str().unwrap().to_string();

    // Confirmed by a person: opted out, audited; a second resolution is a conflict.
    let r = app
        .post(
            &format!("/v1/workspaces/acme/opt-outs/suspected/{id}/confirm"),
            &key,
            json!({"reason": "customer asked by phone too"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "confirmed");
    let c = consent_of(&app, &key, "447700900125").await;
    assert_eq!(c["opted_out"], true, "{c}");
    assert_eq!(c["history"][0]["source"]["kind"], "api", "{c}");
    assert_eq!(c["history"][0]["source"]["message_id"], id, "{c}");
    let r = app
        .post(
            &format!("/v1/workspaces/acme/opt-outs/suspected/{id}/dismiss"),
            &key,
            json!({}),
        )
        .await;
    assert_problem(&r, 409, "conflict", "second resolution");
    let r = app
        .get("/v1/workspaces/acme/opt-outs?status=suspected", &key)
        .await;
    assert!(r.json["items"].as_array().unwrap().is_empty(), "{}", r.json);
    let r = app
        .get("/v1/workspaces/acme/opt-outs?status=confirmed", &key)
        .await;
    assert_eq!(r.json["items"].as_array().unwrap().len(), 1, "{}", r.json);
    let audit = app.get("/v1/workspaces/acme/audit", &key).await;
    assert!(
        audit
            .text
            .contains(&format!("suspected_opt_out:{id} confirmed")),
        "{}",
        audit.text
    );
    rebuild_matches(&app, DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_dismissed_suspicion_changes_nothing_and_a_setting_makes_them_automatic() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    post_ok(
        &app,
        &text_webhook("447700900201", "please stop texting me", "wamid.s1"),
    )
    .await;
    let r = app
        .post(
            "/v1/workspaces/acme/opt-outs/suspected/wamid.s1/dismiss",
            &key,
            json!({"reason": "they meant the delivery driver"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["status"], "dismissed");
    let c = consent_of(&app, &key, "447700900201").await;
    assert_eq!(c["opted_out"], false, "{c}");
    let r = app
        .post(
            "/v1/workspaces/acme/opt-outs/suspected/wamid.nope/confirm",
            &key,
            json!({}),
        )
        .await;
    assert_problem(&r, 404, "not_found", "unknown suspicion");

    let r = app
        .put(
            "/v1/workspaces/acme/consent/settings",
            &key,
            json!({"suspected_automatic": true}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["suspected_automatic"], true);
    post_ok(
        &app,
        &text_webhook("447700900202", "please stop texting me", "wamid.s2"),
    )
    .await;
    let c = consent_of(&app, &key, "447700900202").await;
    assert_eq!(c["opted_out"], true, "{c}");
    assert_eq!(c["history"][0]["source"]["keyword"], "stop texting", "{c}");
    assert!(
        c["history"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("automatic"),
        "{c}"
    );
    let r = app.get("/v1/workspaces/acme/consent/settings", &key).await;
    assert_eq!(r.json["suspected_automatic"], true, "{}", r.json);
}

#[tokio::test]
async fn manual_changes_are_audited_and_bad_input_changes_nothing() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    // Unknown contacts are not opted out, with an empty history (not 404).
    let c = consent_of(&app, &key, "+447700900300").await;
    assert_eq!(c["wa_id"], "447700900300");
    assert_eq!(c["opted_out"], false);
    assert_eq!(c["history"], json!([]));
    let c = consent_of(&app, &key, "US.13491208655302741918").await;
    assert_eq!(c["opted_out"], false);

    let r = app
        .post(
            "/v1/workspaces/acme/contacts/US.13491208655302741918/opt-out",
            &key,
            json!({"reason": "asked on the phone"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["opted_out"], true);
    assert_eq!(r.json["history"][0]["reason"], "asked on the phone");
    assert_eq!(r.json["history"][0]["source"]["kind"], "api");
    let r = app
        .post(
            "/v1/workspaces/acme/contacts/447700900301/opt-out",
            &app.operator,
            json!({"scope": "marketing"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["marketing_opted_out"], true);
    assert_eq!(r.json["opted_out"], false);
    assert_eq!(r.json["history"][0]["source"]["kind"], "admin");
    let r = app
        .post(
            "/v1/workspaces/acme/contacts/US.13491208655302741918/opt-in",
            &key,
            json!({"reason": "re-subscribed on the website"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["opted_out"], false);
    let audit = app.get("/v1/workspaces/acme/audit", &key).await;
    assert_eq!(audit.status, StatusCode::OK, "{}", audit.text);
    for needle in [
        "contact:US.13491208655302741918 opt_out:all",
        "contact:US.13491208655302741918 opt_in:all",
        "contact:447700900301 opt_out:marketing",
    ] {
        assert!(
            audit.text.contains(needle),
            "{needle} not audited: {}",
            audit.text
        );
    }

    // A viewer reads consent but cannot change it.
    let viewer = app
        .key("acme", wabridge_handlers::access::Role::Viewer)
        .await;
    let r = app
        .get("/v1/workspaces/acme/contacts/447700900301/consent", &viewer)
        .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = app
        .post(
            "/v1/workspaces/acme/contacts/447700900301/opt-in",
            &viewer,
            json!({}),
        )
        .await;
    assert_problem(&r, 403, "forbidden", "viewer opt-in");

    // Bad input: 400 validation_failed and nothing appended.
    app.settle().await;
    let head = app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap();
    let long = "x".repeat(501);
    let bad: Vec<(&str, &str, Value)> = vec![
        (
            "POST",
            "/v1/workspaces/acme/contacts/hello/opt-out",
            json!({}),
        ),
        (
            "POST",
            "/v1/workspaces/acme/contacts/12345/opt-out",
            json!({}),
        ),
        (
            "POST",
            "/v1/workspaces/acme/contacts/us.123/opt-in",
            json!({}),
        ),
        (
            "POST",
            "/v1/workspaces/acme/contacts/447700900301/opt-out",
            json!({"scope": "sms"}),
        ),
        (
            "POST",
            "/v1/workspaces/acme/contacts/447700900301/opt-out",
            json!({"reason": long}),
        ),
        (
            "POST",
            "/v1/workspaces/acme/contacts/447700900301/opt-out",
            json!({"why": "x"}),
        ),
        (
            "GET",
            "/v1/workspaces/acme/contacts/not-a-contact/consent",
            Value::Null,
        ),
        ("GET", "/v1/workspaces/acme/opt-outs?scope=sms", Value::Null),
        (
            "GET",
            "/v1/workspaces/acme/opt-outs?status=maybe",
            Value::Null,
        ),
        (
            "GET",
            "/v1/workspaces/acme/opt-outs?status=suspected&scope=all",
            Value::Null,
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": "STOP"}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": [{"keyword": "   ", "language": "en", "kind": "opt_out", "scope": "all"}]}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": [{"keyword": "START", "language": "en", "kind": "opt_out", "scope": "all"}]}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": [{"keyword": "PARE", "language": "pt", "kind": "opt_out", "scope": "everything"}]}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": [{"keyword": "PARE", "language": "pt", "kind": "stop", "scope": "all"}]}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/keywords",
            json!({"keywords": [{"keyword": "PARE", "language": "portuguese!", "kind": "opt_out", "scope": "all"}]}),
        ),
        (
            "PUT",
            "/v1/workspaces/acme/consent/settings",
            json!({"confirmations": [{"language": "en", "text": ""}]}),
        ),
    ];
    for (method, path, body) in &bad {
        let r = match *method {
            "GET" => app.get(path, &key).await,
            "POST" => app.post(path, &key, body.clone()).await,
            _ => app.put(path, &key, body.clone()).await,
        };
        assert_problem(
            &r,
            400,
            "validation_failed",
            &format!("{method} {path} {body}"),
        );
    }
    assert_eq!(
        app.app.ctx.log.last_seq(StreamKind::Domain).await.unwrap(),
        head,
        "bad input appended something"
    );
}

#[tokio::test]
async fn a_workspace_keyword_opts_out_in_that_workspace_only() {
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    // A message before the keywords are set: the processor has read the settings
    // once already, and must not keep them past their change.
    post_ok(&app, &text_webhook("447700900400", "pare", "wamid.k0")).await;
    let c = consent_of(&app, &key, "447700900400").await;
    assert_eq!(c["opted_out"], false, "{c}");
    let r = app
        .put(
            "/v1/workspaces/acme/consent/keywords",
            &key,
            json!({"keywords": [
                {"keyword": " PARE ", "language": "pt-BR", "kind": "opt_out", "scope": "all"},
                {"keyword": "SEM PROMOS", "language": "pt-BR", "kind": "opt_out", "scope": "marketing"},
                {"keyword": "VOLTAR", "language": "pt-BR", "kind": "opt_in", "scope": "all"}
            ]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.json["keywords"][0]["keyword"], "PARE");
    assert!(r.json["builtin"].as_array().unwrap().len() > 50);
    assert!(!r.json["marketing_buttons"].as_array().unwrap().is_empty());
    let audit = app.get("/v1/workspaces/acme/audit", &key).await;
    assert!(
        audit.text.contains("consent:keywords (3)"),
        "{}",
        audit.text
    );

    post_ok(&app, &text_webhook("447700900401", "pare!", "wamid.k1")).await;
    post_ok(
        &app,
        &text_webhook("447700900402", "Sem promos", "wamid.k2"),
    )
    .await;
    let c = consent_of(&app, &key, "447700900401").await;
    assert_eq!(c["opted_out"], true, "{c}");
    assert_eq!(c["source"]["language"], "pt-BR", "{c}");
    let c = consent_of(&app, &key, "447700900402").await;
    assert_eq!(
        (c["opted_out"].clone(), c["marketing_opted_out"].clone()),
        (json!(false), json!(true)),
        "{c}"
    );
    post_ok(&app, &text_webhook("447700900401", "VOLTAR", "wamid.k3")).await;
    let c = consent_of(&app, &key, "447700900401").await;
    assert_eq!(c["opted_out"], false, "{c}");

    // Another workspace on another number does not have the keyword.
    let other = app.workspace("other").await;
    app.claim("other", "700800900100299", "300100200300499")
        .await;
    let body = build(&WebhookSpec {
        kind: Kind::Text,
        phone_number_id: "700800900100299".into(),
        waba_id: "300100200300499".into(),
        from: "447700900403".into(),
        text: Some("PARE".into()),
        wamid: Some("wamid.k4".into()),
        ..WebhookSpec::default()
    });
    post_ok(&app, &body).await;
    let r = app
        .get("/v1/workspaces/other/contacts/447700900403/consent", &other)
        .await;
    assert_eq!(r.json["opted_out"], false, "{}", r.json);
    // ... nor sees acme's contacts.
    let r = app
        .get("/v1/workspaces/other/contacts/447700900401/consent", &other)
        .await;
    assert_eq!(r.json["history"], json!([]), "{}", r.json);
}

/// The send gate's consent check reads its own writes: right after a STOP's webhook
/// got its 200, the contact is opted out, every time.
async fn stop_then_read(log: LogKind, db: DbKind) {
    let (app, key) = setup(log, db).await;
    let mut missed = 0;
    for i in 0..200 {
        let from = format!("4477009{:05}", 20_000 + i);
        post_ok(&app, &text_webhook(&from, "STOP", &format!("wamid.g{i}"))).await;
        let c = consent_of(&app, &key, &from).await;
        if c["opted_out"] != true {
            missed += 1;
        }
    }
    assert_eq!(missed, 0, "opt-outs not visible right after their 200");
}

#[tokio::test]
async fn a_stop_is_visible_right_after_its_200_embedded() {
    stop_then_read(LogKind::Embedded, DbKind::Sqlite).await;
}

#[tokio::test]
async fn a_stop_is_visible_right_after_its_200_jetstream() {
    stop_then_read(LogKind::JetStream, DbKind::Postgres).await;
}

/// A STOP that waited for its number to be claimed still opts the contact out when
/// an operator assigns the unrouted items.
#[tokio::test]
async fn an_unrouted_stop_counts_once_assigned() {
    let app = spawn_app(LogKind::Embedded, DbKind::Sqlite).await;
    let key = app.workspace("acme").await;
    post_ok(&app, &text_webhook("447700900501", "STOP", "wamid.u1")).await;
    app.settle().await;
    let r = app
        .post(
            &format!("/v1/admin/unrouted/{NUMBER}/assign"),
            &app.operator,
            json!({"workspace": "acme"}),
        )
        .await;
    assert!(r.status.is_success(), "{} {}", r.status, r.text);
    let c = consent_of(&app, &key, "447700900501").await;
    assert_eq!(c["opted_out"], true, "{c}");
}

/// The domain log, except that the first `contact.opted_out` appended through it
/// fails (as one publish of a chunk can under load while those beside it are
/// stored).
struct FailingFirstOptOut {
    inner: Arc<dyn wabridge_events::EventLog>,
    failed: std::sync::atomic::AtomicBool,
}

#[async_trait::async_trait]
impl wabridge_events::WrappedLog for FailingFirstOptOut {
    fn inner(&self) -> &dyn wabridge_events::EventLog {
        &*self.inner
    }

    async fn append(
        &self,
        event: wabridge_events::NewEvent,
    ) -> Result<wabridge_events::Appended, wabridge_events::AppendError> {
        if event.envelope.event_type == "contact.opted_out"
            && !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            return Err(wabridge_events::AppendError::Log(
                wabridge_events::LogError(anyhow::anyhow!("refused (test)")),
            ));
        }
        self.inner.append(event).await
    }
}

/// A STOP and then a START from one contact, processed in one chunk whose opt-out
/// append fails once: after the retry (as the driver retries a failed chunk) the
/// log holds the opt-out before the opt-in, and the contact ends opted in. Appended
/// in one piece, the opt-in was stored beside the failed opt-out and the retry
/// stored the opt-out after it: the contact ended opted out.
#[tokio::test]
async fn a_failed_append_never_stores_a_contacts_later_decision_first() {
    use wabridge_projections::Reactor;
    let (app, key) = setup(LogKind::Embedded, DbKind::Sqlite).await;
    let template = stored_template(&app, "447700955000").await;
    let from = "447700955001";
    let chunk = raw_chunk(
        &template,
        vec![
            text_webhook(from, "STOP", "wamid.order1"),
            text_webhook(from, "START", "wamid.order2"),
        ],
    );
    let mut ctx = app.app.ctx.clone();
    ctx.log = Arc::new(FailingFirstOptOut {
        inner: app.app.ctx.log.clone(),
        failed: Default::default(),
    });
    let processor = wabridge_handlers::webhooks::processor::Processor::new(ctx);
    assert!(
        processor.stage(&chunk).await.is_err(),
        "the failed append fails the chunk"
    );
    processor.stage(&chunk).await.expect("the retry");
    app.settle().await;
    assert_eq!(
        consent_events(&app, from).await,
        ["contact.opted_out", "contact.opted_in"]
    );
    let c = consent_of(&app, &key, from).await;
    assert_eq!(c["opted_out"], false, "{c}");
}

/// A raw webhook (a text from `from`) as the ingest stored it, read back from the
/// log: the template of a chunk built by [`raw_chunk`].
async fn stored_template(app: &TestApp, from: &str) -> wabridge_events::StoredEvent {
    post_ok(
        app,
        &text_webhook(from, "hello", &format!("wamid.template{from}")),
    )
    .await;
    app.settle().await;
    app.read_all(StreamKind::Raw, None)
        .await
        .unwrap()
        .pop()
        .expect("the raw webhook")
}

/// Raw webhooks as the ingest stores them, at sequences of their own (past any the
/// log holds), from the stored `template`.
fn raw_chunk(
    template: &wabridge_events::StoredEvent,
    bodies: Vec<Vec<u8>>,
) -> Vec<wabridge_events::StoredEvent> {
    bodies
        .into_iter()
        .enumerate()
        .map(|(i, body)| wabridge_events::StoredEvent {
            seq: 2_000_000 + i as u64,
            payload: body.into(),
            decoded: Default::default(),
            ..template.clone()
        })
        .collect()
}

/// The processor takes a chunk's consent settings fresh for every workspace the
/// chunk reaches, with one look-up of the log for all of them. Here no instance
/// runs the workers, and one workspace's settings changed in the log after its
/// consent read model last moved: a chunk reaching that workspace (beside another)
/// is refused for now (the driver tries it again), not decided on the settings the
/// read model still holds; a chunk reaching only the other workspace goes on.
async fn a_chunk_waits_for_every_workspaces_consent_settings(log: LogKind) {
    use wabridge_projections::{driver::is_unavailable, Reactor};
    let (app, _) = setup(log, DbKind::Sqlite).await;
    app.workspace("other").await;
    const OTHER_NUMBER: &str = "700800900100299";
    const OTHER_WABA: &str = "300100200300499";
    app.claim("other", OTHER_NUMBER, OTHER_WABA).await;
    let template = stored_template(&app, "447700956000").await;
    let app = app.restart_with(|o| o.workers = false).await;
    let ctx = app.app.ctx.clone();
    let acme = wabridge_events::Slug::parse("acme").unwrap();
    let changed = ctx.event(
        Some(&acme),
        &wabridge_handlers::commands::Caller::cli("test"),
        &wabridge_events::types::ConsentSettingsSet {
            suspected_automatic: true,
            confirmations: vec![],
        },
    );
    ctx.log.append(changed).await.expect("the settings change");
    let to_other = |from: &str, wamid: &str| {
        crate::support::app::text_webhook_to(OTHER_NUMBER, OTHER_WABA, from, "hello", wamid)
    };
    let processor = wabridge_handlers::webhooks::processor::Processor::new(ctx);
    processor
        .stage(&raw_chunk(
            &template,
            vec![to_other("447700956001", "wamid.fresh1")],
        ))
        .await
        .expect("a chunk for the other workspace only goes on");
    let both = raw_chunk(
        &template,
        vec![
            to_other("447700956002", "wamid.fresh2"),
            text_webhook("447700956003", "hello", "wamid.fresh3"),
        ],
    );
    match processor.stage(&both).await {
        Ok(_) => {
            panic!("a chunk reaching acme was decided on settings the read model has not applied")
        }
        Err(e) => assert!(is_unavailable(&e), "refused for now, not failed: {e:#}"),
    }
}

#[tokio::test]
async fn a_chunk_waits_for_every_workspaces_consent_settings_embedded() {
    a_chunk_waits_for_every_workspaces_consent_settings(LogKind::Embedded).await;
}

#[tokio::test]
async fn a_chunk_waits_for_every_workspaces_consent_settings_jetstream() {
    a_chunk_waits_for_every_workspaces_consent_settings(LogKind::JetStream).await;
}
