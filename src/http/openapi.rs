//! The OpenAPI 3.1 document, generated from the route table and the Rust types.

use schemars::generate::SchemaSettings;
use serde_json::{json, Map, Value};

use super::routes::{routes, Access};

fn path_params(path: &str) -> Vec<Value> {
    path.split('/')
        .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
        .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
        .collect()
}

fn query_params(schema: &Value) -> Vec<Value> {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return vec![];
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    props
        .iter()
        .map(|(name, s)| {
            let mut p = json!({"name": name, "in": "query", "required": required.contains(&name.as_str()), "schema": s});
            if let Some(d) = s.get("description") {
                p["description"] = d.clone();
            }
            p
        })
        .collect()
}

fn problem(code: &str, what: &str) -> Value {
    json!({"description": format!("{what} (code `{code}`)"), "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// Builds the document.
pub fn document() -> Value {
    let mut gen = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
        })
        .into_generator();
    gen.subschema_for::<super::error::Problem>();
    let mut paths = Map::new();
    for route in routes() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(route.summary));
        op.insert(
            "operationId".into(),
            json!(format!("{} {}", route.method, route.path)),
        );
        let mut params = path_params(route.path);
        if let Some(q) = route.query {
            let mut inline_gen = SchemaSettings::draft2020_12()
                .with(|s| s.inline_subschemas = true)
                .into_generator();
            let inline = q(&mut inline_gen).to_value();
            params.extend(query_params(&inline));
        }
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(req) = route.request {
            let s = req(&mut gen).to_value();
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": s}}}),
            );
        }
        let mut responses = Map::new();
        let (status, body) = route.response;
        let ok = match body {
            Some(f) => {
                json!({"description": "Success", "content": {"application/json": {"schema": f(&mut gen).to_value()}}})
            }
            None => json!({"description": "Success"}),
        };
        responses.insert(status.to_string(), ok);
        responses.insert(
            "400".into(),
            problem("validation_failed", "Malformed body or parameter"),
        );
        match route.access {
            Access::Public => {}
            Access::Meta => {
                responses.insert(
                    "401".into(),
                    problem(
                        "invalid_signature",
                        "Missing, malformed or wrong X-Hub-Signature-256",
                    ),
                );
                responses.insert(
                    "413".into(),
                    problem("payload_too_large", "Over WABRIDGE_MAX_BODY"),
                );
                responses.insert(
                    "503".into(),
                    problem(
                        "not_configured",
                        "META_APP_SECRET / META_VERIFY_TOKEN not set",
                    ),
                );
            }
            Access::Operator | Access::Workspace(_) => {
                responses.insert(
                    "401".into(),
                    problem("unauthorized", "No, malformed, expired or revoked key"),
                );
                responses.insert(
                    "403".into(),
                    problem("forbidden", "The key lacks the permission"),
                );
                responses.insert(
                    "404".into(),
                    problem("not_found", "No such resource (or another workspace's)"),
                );
                op.insert("security".into(), json!([{"bearer": []}]));
            }
        }
        if let Access::Workspace(p) = route.access {
            op.insert("x-permission".into(), json!(p.as_str()));
        }
        if route.access == Access::Operator {
            op.insert("x-permission".into(), json!("operator"));
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method.as_str().to_ascii_lowercase()] = Value::Object(op);
    }
    let schemas: Map<String, Value> = gen.take_definitions(true).into_iter().collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "wabridge",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Between businesses and the WhatsApp Business Cloud API. Errors are application/problem+json (RFC 9457) with a stable `code`. Lists answer {items, next_cursor}."
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "A workspace key (wbk_…) or an operator key (wbo_…)."}}
        }
    })
}
