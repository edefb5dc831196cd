//! Webhooks against the real world: isolation between workspaces that share a WABA,
//! WABA ownership, senders known only by a business-scoped user id, natural keys per
//! number, and the corpus of bodies written outside this project.

use reqwest::StatusCode;
use serde_json::{json, Value};
use wabridge_events::StoredEvent;

use crate::support::app::{assert_problem, spawn_app, DbKind, LogKind, TestApp};

const WABA: &str = "300100200300400";
const N1: &str = "700800900100201";
const N2: &str = "700800900100202";
const N3: &str = "700800900100203";

fn data(ev: &StoredEvent) -> Value {
    serde_json::from_slice(&ev.payload).expect("JSON data")
}

/// A body with one change of `field` for number `number` (when given).
fn change(field: &str, number: Option<&str>, mut value: Value) -> Vec<u8> {
    if let Some(n) = number {
        value["metadata"] = json!({"display_phone_number": format!("1555{}", &n[n.len() - 4..]), "phone_number_id": n});
    }
    json!({"object": "whatsapp_business_account", "entry": [{"id": WABA, "time": 1767226600,
        "changes": [{"field": field, "value": value}]}]})
    .to_string()
    .into_bytes()
}

fn text_message(number: &str, wamid: &str, sender: Value, contacts: Value) -> Vec<u8> {
    let mut m =
        json!({"id": wamid, "timestamp": "1767225600", "type": "text", "text": {"body": "hello"}});
    m.as_object_mut()
        .unwrap()
        .extend(sender.as_object().unwrap().clone());
    change(
        "messages",
        Some(number),
        json!({"messaging_product": "whatsapp", "contacts": contacts, "messages": [m]}),
    )
}

async fn post(app: &TestApp, body: &[u8]) {
    let r = app.signed_webhook(body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
}

/// The claim of a number by a workspace key (not the operator).
async fn claim_as(app: &TestApp, key: &str, ws: &str, number: &str) -> crate::support::app::Resp {
    app.put(
        &format!("/v1/workspaces/{ws}/phone-numbers/{number}"),
        key,
        json!({"waba_id": WABA, "display_phone_number": format!("+1 555 {}", &number[number.len() - 4..])}),
    )
    .await
}

async fn two_workspaces_one_waba(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    let a = app.workspace("ws-a").await;
    let b = app.workspace("ws-b").await;
    let r = claim_as(&app, &a, "ws-a", N1).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    // The WABA is ws-a's now: ws-b cannot claim into it with its own key...
    let r = claim_as(&app, &b, "ws-b", N2).await;
    assert_problem(&r, 409, "conflict", "a claim into another workspace's WABA");
    // ...but an operator can place a number of it there.
    let r = claim_as(&app, &app.operator, "ws-b", N2).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);

    // Number-level fields of each number, a WABA-level field, and a number nobody holds.
    for (field, number) in [
        ("history", N1),
        ("history", N2),
        ("smb_message_echoes", N1),
        ("smb_app_state_sync", N2),
        ("calls", N2),
        ("automatic_events", N1),
        ("history", N3),
    ] {
        post(
            &app,
            &change(
                field,
                Some(number),
                json!({"messaging_product": "whatsapp", field: [{"n": number}]}),
            ),
        )
        .await;
    }
    post(&app, &change("message_template_status_update", None, json!({
        "event": "APPROVED", "message_template_id": 77, "message_template_name": "t", "message_template_language": "en_US"}))).await;
    // A quality update names only the display number: it goes to that number's holder.
    post(
        &app,
        &change(
            "phone_number_quality_update",
            None,
            json!({
        "display_phone_number": "15550202", "event": "FLAGGED", "current_limit": "TIER_250"}),
        ),
    )
    .await;
    app.settle().await;

    let numbers_of = |events: Vec<StoredEvent>| -> Vec<(String, String)> {
        let mut v: Vec<_> = events
            .iter()
            .map(|e| {
                let d = data(e);
                (
                    d["source"]["field"].as_str().unwrap().to_string(),
                    d["source"]["phone_number_id"]
                        .as_str()
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let in_a = numbers_of(app.events_of(Some("ws-a"), "number.updated").await);
    let in_b = numbers_of(app.events_of(Some("ws-b"), "number.updated").await);
    let pair = |f: &str, n: &str| (f.to_string(), n.to_string());
    assert_eq!(
        in_a,
        [
            pair("automatic_events", N1),
            pair("history", N1),
            pair("smb_message_echoes", N1)
        ]
    );
    assert_eq!(
        in_b,
        [
            pair("calls", N2),
            pair("history", N2),
            pair("phone_number_quality_update", N2),
            pair("smb_app_state_sync", N2)
        ]
    );
    // The WABA-level item: its owner only.
    assert_eq!(
        app.events_of(Some("ws-a"), "template.status_updated")
            .await
            .len(),
        1
    );
    assert!(app
        .events_of(Some("ws-b"), "template.status_updated")
        .await
        .is_empty());
    // N3 is held by nobody: unrouted, although its WABA's other numbers are held.
    let unrouted = app.events_of(None, "webhook.unrouted").await;
    assert_eq!(unrouted.len(), 1, "{unrouted:?}");
    assert_eq!(data(&unrouted[0])["phone_number_id"], N3);
    app.stop().await;
}

#[tokio::test]
async fn two_workspaces_one_waba_embedded() {
    two_workspaces_one_waba(LogKind::Embedded).await;
}

#[tokio::test]
async fn two_workspaces_one_waba_jetstream() {
    two_workspaces_one_waba(LogKind::JetStream).await;
}

async fn usernames_and_keys_per_number(log: LogKind) {
    let app = spawn_app(log, DbKind::Sqlite).await;
    app.workspace("ws").await;
    app.claim("ws", N1, WABA).await;
    app.claim("ws", N2, WABA).await;
    // A sender known only by a business-scoped user id, alone and in a batch with a
    // normal message.
    post(
        &app,
        &text_message(N1, "wamid.USER1", json!({"from_user_id": "US.13491208655302741918"}),
            json!([{"profile": {"name": "Kim", "username": "@kim"}, "user_id": "US.13491208655302741918"}])),
    )
    .await;
    let batch = change(
        "messages",
        Some(N1),
        json!({"messaging_product": "whatsapp",
        "contacts": [{"wa_id": "447700900123", "profile": {"name": "Ana"}}, {"user_id": "US.77"}],
        "messages": [
            {"from": "447700900123", "id": "wamid.PHONE", "timestamp": "1767225601", "type": "text", "text": {"body": "a"}},
            {"from_user_id": "US.77", "id": "wamid.USER2", "timestamp": "1767225602", "type": "text", "text": {"body": "b"}}
        ]}),
    );
    post(&app, &batch).await;
    // The same wamid on two numbers of the workspace: two messages.
    for n in [N1, N2] {
        post(
            &app,
            &text_message(n, "wamid.SAME", json!({"from": "447700900123"}), json!([])),
        )
        .await;
    }
    // The same wamid for two numbers nobody holds: two unrouted items.
    for n in ["700800900100298", "700800900100299"] {
        post(
            &app,
            &text_message(
                n,
                "wamid.ORPHAN",
                json!({"from": "447700900124"}),
                json!([]),
            ),
        )
        .await;
    }
    app.settle().await;

    let received = app.events_of(Some("ws"), "message.received").await;
    let by_wamid = |w: &str| -> Vec<Value> {
        received
            .iter()
            .map(data)
            .filter(|d| d["wamid"] == w)
            .collect()
    };
    let user1 = &by_wamid("wamid.USER1")[0];
    assert_eq!(user1["contact"]["user_id"], "US.13491208655302741918");
    assert_eq!(user1["contact"]["username"], "@kim");
    assert!(user1["contact"].get("wa_id").is_none(), "{user1}");
    assert_eq!(
        by_wamid("wamid.PHONE")[0]["contact"]["wa_id"],
        "447700900123"
    );
    assert_eq!(by_wamid("wamid.USER2")[0]["contact"]["user_id"], "US.77");
    let same: Vec<String> = by_wamid("wamid.SAME")
        .iter()
        .map(|d| d["source"]["phone_number_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(same.len(), 2, "the second number's message was dropped");
    let unrouted = app.events_of(None, "webhook.unrouted").await;
    assert_eq!(
        unrouted.len(),
        2,
        "the second unrouted item was never written"
    );
    assert!(app.events_of(None, "dead_letter.recorded").await.is_empty());
    app.stop().await;
}

#[tokio::test]
async fn usernames_and_keys_per_number_embedded() {
    usernames_and_keys_per_number(LogKind::Embedded).await;
}

#[tokio::test]
async fn usernames_and_keys_per_number_jetstream() {
    usernames_and_keys_per_number(LogKind::JetStream).await;
}
