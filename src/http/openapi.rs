//! The OpenAPI 3.1 document. aide derives each operation's request body, query and
//! path parameters and success answer from the handler's types (JSON Schema by
//! schemars); the route table adds what types cannot say: the summary, the access
//! rule (security and `x-permission`), and every problem answer the route can give.

use aide::{
    axum::{routing::ApiMethodRouter, ApiRouter},
    openapi::{Info, OpenApi},
};
use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::routes::{routes, Access, Answer, RouteDef};
use crate::app::App;

/// What the document needs of a route once its handler went into the router.
struct Described {
    method: String,
    path: &'static str,
    access: Access,
    summary: &'static str,
    answers: &'static [Answer],
}

/// The path of the document itself (mounted by the router, described here).
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// Builds the router of `routes` (each handler passed through `layer` first) and
/// the document describing them.
pub fn build(
    routes: Vec<RouteDef>,
    layer: impl Fn(&RouteDef, ApiMethodRouter<App>) -> ApiMethodRouter<App>,
) -> (axum::Router<App>, Value) {
    let mut described = Vec::with_capacity(routes.len());
    let mut api_router = ApiRouter::new();
    for mut route in routes {
        let handler = std::mem::take(&mut route.handler);
        let handler = layer(&route, handler);
        api_router = api_router.api_route(route.path, handler);
        described.push(Described {
            method: route.method.as_str().to_ascii_lowercase(),
            path: route.path,
            access: route.access,
            summary: route.summary,
            answers: route.answers,
        });
    }
    let mut api = OpenApi {
        info: Info {
            title: "wabridge".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: Some(
                "Between businesses and the WhatsApp Business Cloud API. Errors are application/problem+json (RFC 9457) with a stable `code`. Lists answer {items, next_cursor}."
                    .into(),
            ),
            ..Info::default()
        },
        ..OpenApi::default()
    };
    let router = api_router.finish_api(&mut api);
    let mut doc = serde_json::to_value(&api).expect("the document serialises");
    complete(&mut doc, &described);
    (router, doc)
}

/// The document of every route (for `wabridge schemas write` and the drift test).
pub fn document() -> Value {
    build(routes(), |_, h| h).1
}

/// Adds what the handler types cannot say to every operation.
fn complete(doc: &mut Value, routes: &[Described]) {
    doc["openapi"] = json!("3.1.0");
    ensure_problem_schema(doc);
    let paths = doc["paths"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut paths: Map<String, Value> = paths;
    for route in routes {
        let op = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .expect("a path item")
            .entry(route.method.clone())
            .or_insert_with(|| json!({}));
        describe(op, route);
    }
    let own = Described {
        method: "get".into(),
        path: DOCUMENT_PATH,
        access: Access::Public,
        summary: "This document.",
        answers: &[],
    };
    let op = paths
        .entry(DOCUMENT_PATH.to_string())
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("a path item")
        .entry("get")
        .or_insert_with(|| json!({}));
    describe(op, &own);
    // Stable order: by path.
    let sorted: std::collections::BTreeMap<String, Value> = paths.into_iter().collect();
    doc["paths"] = json!(sorted);
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer", "description": "A workspace key (wbk_…) or an operator key (wbo_…)."}});
}

/// The `Problem` schema in the components, whatever the handlers referenced.
fn ensure_problem_schema(doc: &mut Value) {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    gen.subschema_for::<super::error::Problem>();
    let schemas = doc["components"]["schemas"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut schemas: Map<String, Value> = schemas;
    for (name, schema) in gen.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    doc["components"]["schemas"] = Value::Object(schemas);
}

fn problem(codes: &[&str]) -> Value {
    let list: Vec<String> = codes.iter().map(|c| format!("`{c}`")).collect();
    json!({
        "description": format!("A problem document (code {})", list.join(", ")),
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

/// Summary, id, path parameters, security, permission and problem answers.
fn describe(op: &mut Value, route: &Described) {
    op["summary"] = json!(route.summary);
    op["operationId"] = json!(format!(
        "{} {}",
        route.method.to_ascii_uppercase(),
        route.path
    ));
    let mut params = op["parameters"].as_array().cloned().unwrap_or_default();
    for name in route
        .path
        .split('/')
        .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
    {
        let present = params
            .iter()
            .any(|p| p["name"] == name && p["in"] == "path");
        if !present {
            params.push(
                json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}),
            );
        }
    }
    if !params.is_empty() {
        op["parameters"] = Value::Array(params);
    }
    let responses = op["responses"]
        .as_object_mut()
        .map(std::mem::take)
        .unwrap_or_default();
    let mut responses: Map<String, Value> = responses;
    // Only aide's own schema-less defaults are replaced; our problem answers win.
    responses.retain(|status, _| status.starts_with('2'));
    if responses.is_empty() {
        responses.insert("200".into(), json!({"description": "Success"}));
    }
    let mut codes: std::collections::BTreeMap<u16, Vec<&str>> = Default::default();
    let mut add = |status: u16, code: &'static str| codes.entry(status).or_default().push(code);
    add(400, "validation_failed");
    match route.access {
        Access::Public => {}
        Access::Meta => add(401, "invalid_signature"),
        Access::Operator | Access::Workspace(_) => {
            add(401, "unauthorized");
            add(403, "forbidden");
            add(404, "not_found");
            // Fail closed: a key (or a decision) whose freshness cannot be confirmed.
            add(503, "workers_unavailable");
            add(503, "stale_read_model");
            op["security"] = json!([{"bearer": []}]);
        }
    }
    for answer in route.answers {
        match answer {
            Answer::Conflict => add(409, "conflict"),
            Answer::TooLarge => add(413, "payload_too_large"),
            Answer::LogUnavailable => add(503, "log_unavailable"),
            Answer::NotConfigured => add(503, "not_configured"),
            Answer::Unprocessable => add(
                422,
                "contact_opted_out, outside_service_window, no_phone_number",
            ),
            Answer::RateLimited => add(429, "rate_limited"),
            Answer::Upstream => add(502, "meta_unavailable"),
            Answer::VerifyRefused => add(403, "forbidden"),
        }
    }
    for (status, list) in codes {
        responses.insert(status.to_string(), problem(&list));
    }
    op["responses"] = Value::Object(responses);
    match route.access {
        Access::Workspace(p) => op["x-permission"] = json!(p.as_str()),
        Access::Operator => op["x-permission"] = json!("operator"),
        _ => {}
    }
}
