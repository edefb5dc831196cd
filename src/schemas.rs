//! The checked-in `schemas/` directory: one JSON Schema per event type and the
//! OpenAPI document, generated from the code (`wabridge schemas write`), and a
//! comparison used by the drift test (`wabridge schemas check`).

use std::path::Path;

use anyhow::Context;

/// Every generated file: (relative path, content).
pub fn generated() -> Vec<(String, String)> {
    let mut files = vec![];
    for (ty, v) in wabridge_events::types::ALL {
        let schema = wabridge_events::types::schema_of(ty).expect("every type has a schema");
        let mut value = schema.to_value();
        value["title"] = serde_json::json!(format!("{ty} v{v}"));
        files.push((format!("events/{ty}.v{v}.json"), pretty(&value)));
    }
    let raw = serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "webhook.received v1",
        "description": "The payload is Meta's webhook body, byte-exact (not re-serialised; it may not even be JSON). The envelope travels in message headers."
    });
    files.push(("events/webhook.received.v1.json".to_string(), pretty(&raw)));
    let envelope = schemars::schema_for!(wabridge_events::Envelope).to_value();
    files.push(("events/envelope.json".to_string(), pretty(&envelope)));
    files.push((
        "openapi.json".to_string(),
        pretty(&crate::http::openapi::document()),
    ));
    files
}

fn pretty(v: &serde_json::Value) -> String {
    let mut s = serde_json::to_string_pretty(v).expect("json");
    s.push('\n');
    s
}

/// Writes every generated file under `dir`.
pub fn write(dir: &Path) -> anyhow::Result<()> {
    for (rel, content) in generated() {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().expect("has parent"))?;
        std::fs::write(&path, content).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// The files under `dir` that differ from the code (empty = no drift).
pub fn check(dir: &Path) -> Vec<String> {
    generated()
        .into_iter()
        .filter(|(rel, content)| {
            std::fs::read_to_string(dir.join(rel)).ok().as_deref() != Some(content.as_str())
        })
        .map(|(rel, _)| rel)
        .collect()
}
