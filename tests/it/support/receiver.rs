//! A webhook receiver on a random port: records every request (headers, body, when)
//! and answers as scripted (statuses with `Retry-After`, hangs), for the outbound
//! delivery tests; and an independent verification of Standard Webhooks signatures
//! by the Python reference library.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Router,
};

/// How the receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    /// This status, with an optional `Retry-After`.
    Status(u16, Option<&'static str>),
    /// Hold the request this long, then answer 200.
    Hang(Duration),
}

/// One request as received.
#[derive(Clone, Debug)]
pub struct Received {
    /// Lower-case header names.
    pub headers: HashMap<String, String>,
    /// The exact body.
    pub body: Bytes,
    /// When it arrived.
    pub at: Instant,
    /// What it was answered (0 for a held request: its client gave up first).
    pub answered: u16,
}

impl Received {
    /// The `webhook-id` header.
    pub fn id(&self) -> &str {
        self.headers
            .get("webhook-id")
            .map(String::as_str)
            .unwrap_or("")
    }
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

#[derive(Default)]
struct Inner {
    script: VecDeque<Reply>,
    default: Option<Reply>,
    got: Vec<Received>,
}

/// A running receiver.
#[derive(Clone)]
pub struct Receiver {
    /// Where to POST.
    pub url: String,
    inner: Arc<Mutex<Inner>>,
}

async fn receive(
    State(inner): State<Arc<Mutex<Inner>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reply = {
        let mut i = inner.lock().unwrap();
        i.script
            .pop_front()
            .or(i.default.clone())
            .unwrap_or(Reply::Status(200, None))
    };
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let at = Instant::now();
    // Recorded on arrival (a held request is in arrival order too).
    inner.lock().unwrap().got.push(Received {
        headers,
        body,
        at,
        answered: match reply {
            Reply::Status(s, _) => s,
            Reply::Hang(_) => 0,
        },
    });
    let (status, retry_after) = match reply {
        Reply::Status(s, ra) => (s, ra),
        Reply::Hang(d) => {
            tokio::time::sleep(d).await;
            (200, None)
        }
    };
    let mut res = StatusCode::from_u16(status).unwrap().into_response();
    if let Some(ra) = retry_after {
        res.headers_mut().insert("retry-after", ra.parse().unwrap());
    }
    res
}

impl Receiver {
    /// Starts one, answering 200 unless scripted.
    pub async fn start() -> Receiver {
        let inner = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver { url, inner }
    }

    /// The next requests get these answers, in order.
    pub fn script(&self, replies: &[Reply]) {
        self.inner
            .lock()
            .unwrap()
            .script
            .extend(replies.iter().cloned());
    }

    /// Every request once the script is used up gets this answer.
    pub fn answer_always(&self, reply: Reply) {
        self.inner.lock().unwrap().default = Some(reply);
    }

    /// What arrived so far.
    pub fn received(&self) -> Vec<Received> {
        self.inner.lock().unwrap().got.clone()
    }

    /// Waits (20 s at most) until `done` holds for what arrived.
    pub async fn wait_for(&self, what: &str, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let got = self.received();
            if done(&got) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; received {} requests: {:?}",
                got.len(),
                got.iter()
                    .map(|r| (r.id().to_string(), r.answered))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

/// Verifies each delivery with the Python `standardwebhooks` package (the tools
/// venv's interpreter, `TOOLS_PYTHON`, which `./scripts/test` sets): an
/// implementation independent of ours. Panics naming the first that fails.
pub fn verify_with_reference_library(secret: &str, deliveries: &[Received]) {
    let python = tools_bin("TOOLS_PYTHON", "python");
    let items: Vec<serde_json::Value> = deliveries
        .iter()
        .map(|d| {
            serde_json::json!({
                "body": String::from_utf8(d.body.to_vec()).expect("a UTF-8 body"),
                "headers": {
                    "webhook-id": d.headers.get("webhook-id"),
                    "webhook-timestamp": d.headers.get("webhook-timestamp"),
                    "webhook-signature": d.headers.get("webhook-signature"),
                },
            })
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deliveries.json");
    std::fs::write(&path, serde_json::to_vec(&items).unwrap()).unwrap();
    let script = r#"
import json, sys
from standardwebhooks.webhooks import Webhook
wh = Webhook(sys.argv[1])
items = json.load(open(sys.argv[2]))
for i, it in enumerate(items):
    try:
        wh.verify(it["body"], it["headers"])
    except Exception as e:
        print(f"delivery {i} ({it['headers']['webhook-id']}) does not verify: {e!r}")
        sys.exit(1)
print(f"verified {len(items)}")
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, secret, path.to_str().unwrap()])
        .output()
        .expect("the tools venv's python runs (./scripts/test installs it)");
    assert!(
        out.status.success(),
        "standardwebhooks refused a delivery: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A tool `./scripts/test` installs: the variable it exports, else the tools venv.
pub fn tools_bin(var: &str, name: &str) -> std::path::PathBuf {
    std::env::var_os(var).map(Into::into).unwrap_or_else(|| {
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(".tools/venv/bin")
            .join(name)
    })
}
