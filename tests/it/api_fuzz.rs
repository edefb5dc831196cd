//! The OpenAPI document drives a property-based test of every route (schemathesis,
//! from the tools venv): generated valid and invalid requests, with a workspace
//! owner's key, an operator's key and no key. No answer is a 5xx, every answer's
//! status is documented for its route, and every body matches its documented
//! schema (errors are `problem+json`).

use crate::support::{
    app::{spawn_app_with, DbKind, LogKind, TestOptions},
    receiver::tools_bin,
};

fn with_app_id(cfg: &mut wabridge::config::Config) {
    cfg.meta_app_id = Some("123123123123123".into());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_as_documented_to_generated_requests() {
    let mut opts = TestOptions::new(LogKind::Embedded, DbKind::Sqlite);
    opts.configure = Some(with_app_id);
    let app = spawn_app_with(opts).await;
    let owner = app.workspace("acme").await;
    let dir = tempfile::tempdir().unwrap();
    // Workspace routes run against the workspace the keys belong to.
    std::fs::write(
        dir.path().join("schemathesis.toml"),
        "[parameters]\n\"path.ws\" = \"acme\"\n",
    )
    .unwrap();
    let bin = tools_bin("SCHEMATHESIS", "schemathesis");
    for (who, key) in [
        ("owner", Some(owner.as_str())),
        ("operator", Some(app.operator.as_str())),
        ("nobody", None),
    ] {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.current_dir(dir.path())
            .args([
                "run",
                &app.url("/openapi.json"),
                "--max-examples",
                "10",
                "--seed",
                "1",
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
                "--no-color",
            ]);
        if let Some(k) = key {
            cmd.args(["-H", &format!("Authorization: Bearer {k}")]);
        }
        let out = cmd.output().await.unwrap_or_else(|e| {
            panic!(
                "{} ({e}); run ./scripts/test, which installs it",
                bin.display()
            )
        });
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis ({who}) found failures:\n{}",
            text.split("=== FAILURES ===").nth(1).unwrap_or(&text)
        );
        let summary = text
            .lines()
            .rev()
            .find(|l| l.contains(" in "))
            .unwrap_or("");
        eprintln!("schemathesis as {who}: {summary}");
    }
    app.stop().await;
}
