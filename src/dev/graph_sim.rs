//! A Graph API simulator: the parts of Meta's WhatsApp Cloud API that wabridge
//! calls (sending, media, Embedded Signup), with Meta's shapes, error envelope,
//! rate limits and status webhooks, plus scripts for failures and hangs.
//!
//! Every path takes an optional version segment (`/v23.0/...` or `/...`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Query, Request, State as AxumState};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use super::webhook::{
    base64, envelope, meta_json, new_wamid, number_value, pricing, send_signed, status_error,
    unix_now, DEFAULT_DISPLAY_NUMBER, DEFAULT_WABA_ID,
};

/// Largest request body the simulator reads.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// Most recent calls kept for [`GraphSim::calls`].
const MAX_CALLS: usize = 100_000;
/// Chunk size of streamed media downloads.
const MEDIA_CHUNK: usize = 64 * 1024;
/// How long a media URL from `GET /<MEDIA_ID>` stays valid (Meta: 5 minutes).
const MEDIA_URL_TTL: Duration = Duration::from_secs(5 * 60);
/// Register calls allowed per number in [`REGISTER_WINDOW`] before 133016.
const REGISTER_LIMIT: usize = 10;
/// Meta's moving window for register attempts (72 h).
const REGISTER_WINDOW: Duration = Duration::from_secs(72 * 3600);
/// `expires_in` of exchanged tokens (about 60 days, as Meta answers).
const TOKEN_EXPIRES_IN: u64 = 5_183_944;
/// Pair buckets kept before idle ones are dropped.
const MAX_PAIRS: usize = 10_000;

/// How the simulator behaves.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// App secret used to sign status webhooks (X-Hub-Signature-256 = "sha256=" + hex
    /// HMAC-SHA256 of the exact body). When set, the code exchange also checks
    /// `client_secret` against it.
    pub app_secret: Option<String>,
    /// Where to post status webhooks (sent, delivered, read) for accepted messages;
    /// None = post nothing.
    pub webhook_url: Option<String>,
    /// Messages per second per phone number (Meta's default 80); over → error 130429.
    /// At most this many sends are accepted in any one-second window; 0 = unlimited.
    pub per_number_mps: u32,
    /// Pair limit: one message per `pair_interval` per (number, recipient), with
    /// `pair_burst` allowed at once (Meta: 1 per 6 s, bursts of up to 45 that borrow
    /// from later quota); over → 131056. A zero interval or burst disables it.
    pub pair_interval: Duration,
    /// Messages a (number, recipient) pair may send at once before the pair limit applies.
    pub pair_burst: u32,
    /// Delay before each status webhook (default 20 ms).
    pub status_delay: Duration,
    /// WABA id and display number used in webhooks for a phone number id (default for
    /// unlisted numbers: waba "100000000000001", display "15550000001").
    pub numbers: HashMap<String, (String, String)>,
    /// Tokens accepted as Bearer; empty = any non-empty token is accepted. Others →
    /// error 190. Tokens issued by the code exchange are always accepted.
    pub valid_tokens: Vec<String>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            app_secret: None,
            webhook_url: None,
            per_number_mps: 80,
            pair_interval: Duration::from_secs(6),
            pair_burst: 45,
            status_delay: Duration::from_millis(20),
            numbers: HashMap::new(),
            valid_tokens: Vec::new(),
        }
    }
}

/// What a recipient (or a code / a number for ESB calls) is scripted to get.
#[derive(Clone, Debug)]
pub enum Script {
    /// Meta's error envelope with this code and HTTP status, `times` times, then normal
    /// service. [`Script::fail`] picks Meta's usual status for a code.
    Fail {
        /// The error code (`error.code`).
        code: i64,
        /// The HTTP status of the answer.
        http_status: u16,
        /// How many requests get it.
        times: u32,
    },
    /// Never answer (hold the request open) `times` times.
    Hang {
        /// How many requests are held.
        times: u32,
    },
    /// Answer success, then post a `failed` status webhook with this error code
    /// (an asynchronous failure, e.g. 131050, 131026). Applies to every send.
    FailAsync {
        /// The error code in the status's `errors[]`.
        code: i64,
    },
}

impl Script {
    /// A [`Script::Fail`] with the HTTP status Meta uses for the code (429 for 130429 and
    /// 131056, 500 for 1, 2 and 131000, 401 for 190, otherwise 400).
    pub fn fail(code: i64, times: u32) -> Script {
        Script::Fail {
            code,
            http_status: default_status(code),
            times,
        }
    }
}

/// One request the simulator received (for assertions).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Call {
    /// The HTTP method.
    pub method: String,
    /// The path as requested, e.g. "/v23.0/1234/messages".
    pub path: String,
    /// The raw query string ("" when none).
    pub query: String,
    /// The Authorization header as sent.
    pub authorization: Option<String>,
    /// The JSON body; `Value::Null` when none or not JSON.
    pub body: Value,
    /// When it arrived.
    pub at: SystemTime,
}

/// The Graph API simulator. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct GraphSim {
    state: Arc<SimState>,
}

struct SimState {
    cfg: SimConfig,
    inner: Mutex<Inner>,
    http: reqwest::Client,
    closing: watch::Sender<bool>,
    hanging: AtomicUsize,
}

#[derive(Default)]
struct Inner {
    calls: VecDeque<Call>,
    recipient_scripts: HashMap<String, Script>,
    register_scripts: HashMap<String, Script>,
    subscribe_scripts: HashMap<String, Script>,
    exchange_scripts: HashMap<String, Script>,
    number_scripts: HashMap<String, Script>,
    codes: HashMap<String, CodeState>,
    issued_tokens: HashSet<String>,
    media: HashMap<String, Media>,
    media_urls: HashMap<String, (String, Instant)>,
    number_windows: HashMap<String, VecDeque<Instant>>,
    pairs: HashMap<(String, String), Bucket>,
    registrations: HashMap<String, VecDeque<Instant>>,
    /// Set after start ([`GraphSim::set_webhook_url`]); overrides the configuration's.
    webhook_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CodeState {
    Expired,
    Used,
}

struct Media {
    mime_type: String,
    bytes: Bytes,
    sha256: String,
}

/// Which script table a call consults.
#[derive(Clone, Copy)]
enum Table {
    Recipient,
    Register,
    Subscribe,
    Exchange,
    Number,
}

/// What a script decided for one call.
enum Outcome {
    Normal,
    Fail(ApiError),
    Hang,
    FailAsync(i64),
}

impl GraphSim {
    /// A simulator with this configuration and no scripts.
    pub fn new(cfg: SimConfig) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        let (closing, _) = watch::channel(false);
        GraphSim {
            state: Arc::new(SimState {
                cfg,
                inner: Mutex::new(Inner::default()),
                http,
                closing,
                hanging: AtomicUsize::new(0),
            }),
        }
    }

    /// The router (mount at the root; every path takes any version segment like
    /// `/v23.0/...`, and also works without one).
    pub fn router(&self) -> Router {
        Router::new().fallback(dispatch).with_state(self.clone())
    }

    /// Serves on a listener until the future resolves. Requests held by a Hang script
    /// are then answered with error 2 so that shutdown completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let closing = self.state.closing.clone();
        let signal = async move {
            shutdown.await;
            closing.send_replace(true);
        };
        axum::serve(listener, self.router())
            .with_graceful_shutdown(signal)
            .await
    }

    /// Where to post status webhooks from now on (for a wabridge started after the
    /// simulator, whose address was not known yet).
    pub fn set_webhook_url(&self, url: &str) {
        self.lock().webhook_url = Some(url.to_string());
    }

    /// Scripts the messages endpoint for a recipient (the `to` digits without '+', or a
    /// `recipient` user id). Replaces any earlier script for it.
    pub fn script_recipient(&self, recipient: &str, script: Script) {
        let key = recipient.trim_start_matches('+').to_string();
        self.lock().recipient_scripts.insert(key, script);
    }

    /// Scripts `/register` for a phone number id.
    pub fn script_register(&self, phone_number_id: &str, script: Script) {
        self.lock()
            .register_scripts
            .insert(phone_number_id.to_string(), script);
    }

    /// Scripts `/subscribed_apps` for a WABA id.
    pub fn script_subscribe(&self, waba_id: &str, script: Script) {
        self.lock()
            .subscribe_scripts
            .insert(waba_id.to_string(), script);
    }

    /// Scripts the code exchange for a code (a failure does not use the code up).
    pub fn script_exchange(&self, code: &str, script: Script) {
        self.lock()
            .exchange_scripts
            .insert(code.to_string(), script);
    }

    /// Scripts `GET /<PHONE_NUMBER_ID>?fields=…` (the number's details).
    pub fn script_number(&self, phone_number_id: &str, script: Script) {
        self.lock()
            .number_scripts
            .insert(phone_number_id.to_string(), script);
    }

    /// Marks an ESB code as expired (100/36007 "This authorization code has expired.").
    /// Any other code can be exchanged once; a second exchange answers 100/36009
    /// "This authorization code has been used."
    pub fn expire_code(&self, code: &str) {
        self.lock()
            .codes
            .insert(code.to_string(), CodeState::Expired);
    }

    /// Serves this media for a media id (content type, bytes).
    pub fn add_media(&self, media_id: &str, mime_type: &str, bytes: Bytes) {
        let sha256 = base64(&Sha256::digest(&bytes));
        let media = Media {
            mime_type: mime_type.to_string(),
            bytes,
            sha256,
        };
        self.lock().media.insert(media_id.to_string(), media);
    }

    /// Every call so far, in order (the most recent 100,000).
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.iter().cloned().collect()
    }

    /// Calls whose path ends with the suffix (e.g. "/messages").
    pub fn calls_to(&self, suffix: &str) -> Vec<Call> {
        self.lock()
            .calls
            .iter()
            .filter(|c| c.path.ends_with(suffix))
            .cloned()
            .collect()
    }

    /// Requests currently held open by Hang scripts (a request stops counting once its
    /// client disconnects).
    pub fn hanging(&self) -> usize {
        self.state.hanging.load(Ordering::SeqCst)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.state
            .inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cfg(&self) -> &SimConfig {
        &self.state.cfg
    }
}

/// Runs the simulator on `listen` (for `wabridge dev graph-sim`), printing its URL,
/// until Ctrl-C.
pub async fn run(listen: std::net::SocketAddr, cfg: SimConfig) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("Graph API simulator listening on http://{addr} (use it as the Graph API base URL)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    GraphSim::new(cfg).serve(listener, shutdown).await?;
    Ok(())
}

// ---------------------------------------------------------------------------
// Requests and routing

/// A request, read whole.
struct Req {
    method: Method,
    path: String,
    query: String,
    params: HashMap<String, String>,
    authorization: Option<String>,
    host: String,
    json: Value,
}

impl Req {
    async fn read(request: Request) -> Result<Req, ApiError> {
        let (parts, body) = request.into_parts();
        let bytes = axum::body::to_bytes(body, MAX_BODY)
            .await
            .map_err(|_| ApiError::new(100).details("The request body is too large."))?;
        let params = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        Ok(Req {
            method: parts.method,
            path: parts.uri.path().to_string(),
            query: parts.uri.query().unwrap_or("").to_string(),
            params,
            authorization: header_text(&parts.headers, header::AUTHORIZATION),
            host: header_text(&parts.headers, header::HOST)
                .unwrap_or_else(|| "127.0.0.1".to_string()),
            json: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        })
    }

    fn bearer(&self) -> Option<&str> {
        let value = self.authorization.as_deref()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim();
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn call(&self) -> Call {
        Call {
            method: self.method.to_string(),
            path: self.path.clone(),
            query: self.query.clone(),
            authorization: self.authorization.clone(),
            body: self.json.clone(),
            at: SystemTime::now(),
        }
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

async fn dispatch(AxumState(sim): AxumState<GraphSim>, request: Request) -> Response {
    let req = match Req::read(request).await {
        Ok(req) => req,
        Err(error) => return error.into_response(),
    };
    sim.record(req.call());
    sim.route(&req).await
}

impl GraphSim {
    fn record(&self, call: Call) {
        let mut inner = self.lock();
        if inner.calls.len() >= MAX_CALLS {
            inner.calls.pop_front();
        }
        inner.calls.push_back(call);
    }

    async fn route(&self, req: &Req) -> Response {
        let segments = route_segments(&req.path);
        let result = match (&req.method, segments.as_slice()) {
            (&Method::POST, [id, "messages"]) => self.send_message(req, id).await,
            (&Method::POST, [id, "register"]) => self.register(req, id).await,
            (&Method::POST, [id, "subscribed_apps"]) => self.subscribe(req, id).await,
            (&Method::GET, ["oauth", "access_token"]) => self.exchange_code(req).await,
            (&Method::GET, ["media-download", id]) => self.download_media(req, id),
            (&Method::GET, [id]) if req.param("fields").is_some() && !self.has_media(id) => {
                self.number_info(req, id).await
            }
            (&Method::GET, [id]) => self.media_info(req, id),
            _ => Err(unsupported(req, segments.first().copied())),
        };
        result.unwrap_or_else(IntoResponse::into_response)
    }

    /// Answers a Hang: holds the request until the client goes away (the future is then
    /// dropped) or the simulator shuts down.
    async fn hang(&self) -> Response {
        let _guard = HangGuard::new(&self.state.hanging);
        let mut closing = self.state.closing.subscribe();
        let _ = closing.wait_for(|closed| *closed).await;
        ApiError::new(2)
            .details("The simulator is shutting down.")
            .into_response()
    }

    fn authorize(&self, req: &Req) -> Result<(), ApiError> {
        let Some(token) = req.bearer() else {
            return Err(
                ApiError::new(190).details("An access token is required to request this resource.")
            );
        };
        if self.token_accepted(token) {
            Ok(())
        } else {
            Err(ApiError::new(190)
                .details("Invalid OAuth access token - Cannot parse access token"))
        }
    }

    fn token_accepted(&self, token: &str) -> bool {
        let valid = &self.cfg().valid_tokens;
        valid.is_empty()
            || valid.iter().any(|t| t == token)
            || self.lock().issued_tokens.contains(token)
    }

    /// Consumes one use of the script for `key` in a table.
    fn take_script(&self, table: Table, key: &str) -> Outcome {
        let mut inner = self.lock();
        let scripts = match table {
            Table::Recipient => &mut inner.recipient_scripts,
            Table::Register => &mut inner.register_scripts,
            Table::Subscribe => &mut inner.subscribe_scripts,
            Table::Exchange => &mut inner.exchange_scripts,
            Table::Number => &mut inner.number_scripts,
        };
        let Some(script) = scripts.get_mut(key) else {
            return Outcome::Normal;
        };
        let (outcome, left) = match script {
            Script::Fail {
                code,
                http_status,
                times,
            } => (
                Outcome::Fail(ApiError::new(*code).status(*http_status)),
                use_once(times),
            ),
            Script::Hang { times } => (Outcome::Hang, use_once(times)),
            Script::FailAsync { code } => (Outcome::FailAsync(*code), true),
        };
        if !left {
            scripts.remove(key);
        }
        outcome
    }

    /// Applies a script that can only fail or hang (register, subscribed_apps).
    async fn scripted(&self, table: Table, key: &str) -> Result<(), Response> {
        match self.take_script(table, key) {
            Outcome::Fail(error) => Err(error.into_response()),
            Outcome::Hang => Err(self.hang().await),
            Outcome::Normal | Outcome::FailAsync(_) => Ok(()),
        }
    }

    fn number(&self, phone_number_id: &str) -> (String, String) {
        self.cfg()
            .numbers
            .get(phone_number_id)
            .cloned()
            .unwrap_or_else(|| {
                (
                    DEFAULT_WABA_ID.to_string(),
                    DEFAULT_DISPLAY_NUMBER.to_string(),
                )
            })
    }
}

/// Decrements a script's remaining uses; false once none are left.
fn use_once(times: &mut u32) -> bool {
    *times = times.saturating_sub(1);
    *times > 0
}

/// Path segments without the leading version (`v23.0`), if any.
fn route_segments(path: &str) -> Vec<&str> {
    let mut segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if segments.first().is_some_and(|s| is_version(s)) {
        segments.remove(0);
    }
    segments
}

fn is_version(segment: &str) -> bool {
    segment.strip_prefix('v').is_some_and(|rest| {
        !rest.is_empty()
            && rest
                .split('.')
                .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn unsupported(req: &Req, object: Option<&str>) -> ApiError {
    let method = req.method.as_str().to_ascii_lowercase();
    let object = object.unwrap_or("");
    ApiError::new(100)
        .status(404)
        .title(format!("Unsupported {method} request"))
        .details(format!(
            "Unsupported {method} request. Object with ID '{object}' does not exist, cannot be loaded due to missing permissions, or does not support this operation."
        ))
}

/// Counts a held request for as long as its future lives.
struct HangGuard<'a>(&'a AtomicUsize);

impl<'a> HangGuard<'a> {
    fn new(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        HangGuard(counter)
    }
}

impl Drop for HangGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

// ---------------------------------------------------------------------------
// Sending

/// A validated send request.
struct Outbound {
    /// `contacts[].input`: `to` as given, or the recipient id.
    input: String,
    /// Digits of `to`, when given.
    wa_id: Option<String>,
    /// The `recipient` user id, when `to` was not given.
    user_id: Option<String>,
    template: bool,
    callback: Option<String>,
}

impl Outbound {
    /// The recipient key used by scripts and the pair limit.
    fn key(&self) -> &str {
        self.wa_id
            .as_deref()
            .or(self.user_id.as_deref())
            .unwrap_or_default()
    }

    fn response(&self, wamid: &str) -> Value {
        let mut contact = Map::new();
        contact.insert("input".into(), json!(self.input));
        if let Some(wa_id) = &self.wa_id {
            contact.insert("wa_id".into(), json!(wa_id));
        }
        if let Some(user_id) = &self.user_id {
            contact.insert("user_id".into(), json!(user_id));
        }
        json!({
            "messaging_product": "whatsapp",
            "contacts": [Value::Object(contact)],
            "messages": [{ "id": wamid }]
        })
    }
}

const MESSAGE_TYPES: &[&str] = &[
    "text",
    "template",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "location",
    "contacts",
    "interactive",
    "reaction",
];

fn invalid(details: impl Into<String>) -> ApiError {
    ApiError::new(100).details(details)
}

fn parse_send(body: &Value) -> Result<Outbound, ApiError> {
    let Some(object) = body.as_object() else {
        return Err(invalid("The request body must be a JSON object."));
    };
    if object.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(invalid(
            "The parameter messaging_product is required and must be \"whatsapp\".",
        ));
    }
    let kind = check_type(object)?;
    let (input, wa_id, user_id) = parse_recipient(object)?;
    Ok(Outbound {
        input,
        wa_id,
        user_id,
        template: kind == "template",
        callback: object
            .get("biz_opaque_callback_data")
            .and_then(Value::as_str)
            .map(str::to_string),
    })
}

/// Checks `type` and that its object is present (and minimally complete for text and
/// templates); returns the type.
fn check_type(object: &Map<String, Value>) -> Result<&str, ApiError> {
    let Some(kind) = object.get("type").and_then(Value::as_str) else {
        return Err(invalid("The parameter type is required."));
    };
    if !MESSAGE_TYPES.contains(&kind) {
        return Err(invalid(format!(
            "Param type '{kind}' is not a valid message type."
        )));
    }
    let Some(content) = object.get(kind).filter(|v| v.is_object() || v.is_array()) else {
        return Err(invalid(format!("The parameter {kind} is required.")));
    };
    match kind {
        "text" => check_text(content)?,
        "template" => check_template(content)?,
        _ => {}
    }
    Ok(kind)
}

fn check_text(text: &Value) -> Result<(), ApiError> {
    match text.get("body").and_then(Value::as_str) {
        Some(body) if !body.trim().is_empty() && body.chars().count() <= 4096 => Ok(()),
        Some(body) if !body.trim().is_empty() => Err(invalid(
            "Param text['body'] must be at most 4096 characters long.",
        )),
        _ => Err(invalid("The parameter text['body'] is required.")),
    }
}

fn check_template(template: &Value) -> Result<(), ApiError> {
    if template.get("name").and_then(Value::as_str).is_none() {
        return Err(invalid("The parameter template['name'] is required."));
    }
    if template
        .pointer("/language/code")
        .and_then(Value::as_str)
        .is_none()
    {
        return Err(invalid(
            "The parameter template['language']['code'] is required.",
        ));
    }
    Ok(())
}

type Recipient = (String, Option<String>, Option<String>);

/// `to` (digits with an optional '+') wins over `recipient` (a business-scoped user id).
fn parse_recipient(object: &Map<String, Value>) -> Result<Recipient, ApiError> {
    if let Some(to) = object.get("to") {
        let to = to
            .as_str()
            .ok_or_else(|| invalid("Param to must be a string."))?;
        let digits = to.trim().trim_start_matches('+');
        if digits.len() < 5 || digits.len() > 15 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid(format!(
                "Param to '{to}' is not a valid phone number (digits with the country code, optionally starting with '+')."
            )));
        }
        return Ok((to.to_string(), Some(digits.to_string()), None));
    }
    let Some(recipient) = object.get("recipient") else {
        return Err(invalid("The parameter to (or recipient) is required."));
    };
    match recipient.as_str() {
        Some(id) if is_user_id(id) => Ok((id.to_string(), None, Some(id.to_string()))),
        _ => Err(invalid(format!(
            "Param recipient {recipient} is not a valid business-scoped user id (like US.13491208655302741918)."
        ))),
    }
}

/// `CC.<alphanumeric>` (or `CC.ENT.<alphanumeric>`), at most 135 characters.
fn is_user_id(id: &str) -> bool {
    let Some((country, rest)) = id.split_once('.') else {
        return false;
    };
    let rest = rest.strip_prefix("ENT.").unwrap_or(rest);
    id.len() <= 135
        && country.len() == 2
        && country.bytes().all(|b| b.is_ascii_uppercase())
        && !rest.is_empty()
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
}

impl GraphSim {
    async fn send_message(&self, req: &Req, phone_number_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        let send = parse_send(&req.json)?;
        self.check_limits(phone_number_id, send.key())?;
        let failure = match self.take_script(Table::Recipient, send.key()) {
            Outcome::Normal => None,
            Outcome::FailAsync(code) => Some(code),
            Outcome::Fail(error) => return Err(error),
            Outcome::Hang => return Ok(self.hang().await),
        };
        let wamid = new_wamid(send.key());
        self.spawn_statuses(phone_number_id, &send, &wamid, failure);
        Ok(Json(send.response(&wamid)).into_response())
    }

    /// The per-number throughput (130429), then the pair limit (131056).
    fn check_limits(&self, phone_number_id: &str, recipient: &str) -> Result<(), ApiError> {
        let cfg = self.cfg();
        let now = Instant::now();
        let mut inner = self.lock();
        let window = inner
            .number_windows
            .entry(phone_number_id.to_string())
            .or_default();
        if !admit_in_window(window, now, cfg.per_number_mps) {
            return Err(ApiError::new(130429));
        }
        if cfg.pair_burst == 0 || cfg.pair_interval.is_zero() {
            return Ok(());
        }
        let burst = f64::from(cfg.pair_burst);
        if inner.pairs.len() >= MAX_PAIRS {
            let interval = cfg.pair_interval;
            inner.pairs.retain(|_, b| !b.is_full(now, burst, interval));
        }
        let bucket = inner
            .pairs
            .entry((phone_number_id.to_string(), recipient.to_string()))
            .or_insert_with(|| Bucket::full(burst, now));
        if bucket.take(now, burst, cfg.pair_interval) {
            Ok(())
        } else {
            Err(ApiError::new(131056))
        }
    }

    /// Posts the status webhooks for an accepted message in the background.
    fn spawn_statuses(
        &self,
        phone_number_id: &str,
        send: &Outbound,
        wamid: &str,
        failure: Option<i64>,
    ) {
        let late = self.lock().webhook_url.clone();
        let Some(url) = late.or_else(|| self.cfg().webhook_url.clone()) else {
            return;
        };
        let (waba_id, display) = self.number(phone_number_id);
        let delivery = Delivery {
            url,
            secret: self.cfg().app_secret.clone(),
            delay: self.cfg().status_delay,
            waba_id,
            display,
            phone_number_id: phone_number_id.to_string(),
            wamid: wamid.to_string(),
            wa_id: send.wa_id.clone(),
            user_id: send.user_id.clone(),
            callback: send.callback.clone(),
            category: if send.template {
                "marketing"
            } else {
                "service"
            },
            failure,
        };
        let client = self.state.http.clone();
        tokio::spawn(async move { delivery.run(&client).await });
    }
}

/// Admits one event if fewer than `limit` were admitted in the last second (0 = no limit).
fn admit_in_window(window: &mut VecDeque<Instant>, now: Instant, limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    while window
        .front()
        .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
    {
        window.pop_front();
    }
    if window.len() >= limit as usize {
        return false;
    }
    window.push_back(now);
    true
}

/// A token bucket refilled by one token per interval.
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Bucket {
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, capacity: f64, interval: Duration) {
        let earned = now.duration_since(self.last).as_secs_f64() / interval.as_secs_f64();
        self.tokens = (self.tokens + earned).min(capacity);
        self.last = now;
    }

    fn take(&mut self, now: Instant, capacity: f64, interval: Duration) -> bool {
        self.refill(now, capacity, interval);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&mut self, now: Instant, capacity: f64, interval: Duration) -> bool {
        self.refill(now, capacity, interval);
        self.tokens >= capacity
    }
}

/// The status webhooks of one accepted message.
struct Delivery {
    url: String,
    secret: Option<String>,
    delay: Duration,
    waba_id: String,
    display: String,
    phone_number_id: String,
    wamid: String,
    wa_id: Option<String>,
    user_id: Option<String>,
    callback: Option<String>,
    category: &'static str,
    failure: Option<i64>,
}

impl Delivery {
    async fn run(self, client: &reqwest::Client) {
        let statuses: &[&str] = if self.failure.is_some() {
            &["failed"]
        } else {
            &["sent", "delivered", "read"]
        };
        for status in statuses {
            tokio::time::sleep(self.delay).await;
            let body = meta_json(&self.body(status));
            if let Err(error) = send_signed(client, &self.url, self.secret.as_deref(), body).await {
                tracing::warn!(%error, url = %self.url, "graph-sim: posting a status webhook failed");
            }
        }
    }

    fn body(&self, status: &str) -> Value {
        let mut rest = Map::new();
        if status != "failed" {
            rest.insert("contacts".into(), json!([self.contact()]));
        }
        rest.insert("statuses".into(), json!([self.status_item(status)]));
        let value = number_value(&self.display, &self.phone_number_id, rest);
        envelope(&self.waba_id, "messages", value)
    }

    fn contact(&self) -> Value {
        let mut contact = Map::new();
        if let Some(wa_id) = &self.wa_id {
            contact.insert("wa_id".into(), json!(wa_id));
        }
        if let Some(user_id) = &self.user_id {
            contact.insert("user_id".into(), json!(user_id));
        }
        Value::Object(contact)
    }

    fn status_item(&self, status: &str) -> Value {
        let mut item = Map::new();
        item.insert("id".into(), json!(self.wamid));
        item.insert("status".into(), json!(status));
        item.insert("timestamp".into(), json!(unix_now().to_string()));
        if let Some(wa_id) = &self.wa_id {
            item.insert("recipient_id".into(), json!(wa_id));
        }
        if let Some(user_id) = &self.user_id {
            item.insert("recipient_user_id".into(), json!(user_id));
        }
        if let Some(callback) = &self.callback {
            item.insert("biz_opaque_callback_data".into(), json!(callback));
        }
        match (status, self.failure) {
            ("failed", Some(code)) => {
                item.insert("errors".into(), json!([status_error(code)]));
            }
            ("sent" | "delivered", _) => {
                item.insert("pricing".into(), pricing(self.category));
            }
            _ => {}
        }
        Value::Object(item)
    }
}

// ---------------------------------------------------------------------------
// Embedded Signup: code exchange, subscribed_apps, register

impl GraphSim {
    async fn exchange_code(&self, req: &Req) -> Result<Response, ApiError> {
        for name in ["client_id", "client_secret", "code"] {
            if req.param(name).is_none() {
                return Err(ApiError::oauth(
                    100,
                    None,
                    format!("Missing {name} parameter."),
                ));
            }
        }
        let secret = req.param("client_secret").unwrap_or_default();
        if self
            .cfg()
            .app_secret
            .as_deref()
            .is_some_and(|s| s != secret)
        {
            return Err(ApiError::oauth(1, None, "Error validating client secret."));
        }
        let code = req.param("code").unwrap_or_default().to_string();
        if let Err(response) = self.scripted(Table::Exchange, &code).await {
            return Ok(response);
        }
        let token = format!("EAAG{}", random_text(120));
        let mut inner = self.lock();
        match inner.codes.get(&code) {
            Some(CodeState::Expired) => Err(ApiError::oauth(
                100,
                Some(36007),
                "This authorization code has expired.",
            )),
            Some(CodeState::Used) => Err(ApiError::oauth(
                100,
                Some(36009),
                "This authorization code has been used.",
            )),
            None => {
                inner.codes.insert(code, CodeState::Used);
                inner.issued_tokens.insert(token.clone());
                Ok(Json(json!({
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": TOKEN_EXPIRES_IN
                }))
                .into_response())
            }
        }
    }

    async fn subscribe(&self, req: &Req, waba_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        if let Err(response) = self.scripted(Table::Subscribe, waba_id).await {
            return Ok(response);
        }
        Ok(Json(json!({ "success": true })).into_response())
    }

    async fn register(&self, req: &Req, phone_number_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        check_register_body(&req.json)?;
        self.count_registration(phone_number_id)?;
        if let Err(response) = self.scripted(Table::Register, phone_number_id).await {
            return Ok(response);
        }
        Ok(Json(json!({ "success": true })).into_response())
    }

    /// Meta's limit of 10 register calls per number in a moving 72 h (then 133016).
    fn count_registration(&self, phone_number_id: &str) -> Result<(), ApiError> {
        let now = Instant::now();
        let mut inner = self.lock();
        let log = inner
            .registrations
            .entry(phone_number_id.to_string())
            .or_default();
        while log
            .front()
            .is_some_and(|t| now.duration_since(*t) >= REGISTER_WINDOW)
        {
            log.pop_front();
        }
        if log.len() >= REGISTER_LIMIT {
            return Err(ApiError::new(133016));
        }
        log.push_back(now);
        Ok(())
    }
}

fn check_register_body(body: &Value) -> Result<(), ApiError> {
    if body.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
        return Err(invalid(
            "The parameter messaging_product is required and must be \"whatsapp\".",
        ));
    }
    match body.get("pin").and_then(Value::as_str) {
        Some(pin) if pin.len() == 6 && pin.bytes().all(|b| b.is_ascii_digit()) => Ok(()),
        Some(_) => Err(invalid("Param pin must be a 6-digit number.")),
        None => Err(invalid("The parameter pin is required.")),
    }
}

/// A display number as Meta's phone-number node shows it: `+1 555-123-0000` for a
/// North American number, else `+` and the digits.
fn formatted_display(digits: &str) -> String {
    match digits.as_bytes() {
        [b'1', rest @ ..] if rest.len() == 10 => {
            let r = &digits[1..];
            format!("+1 {}-{}-{}", &r[..3], &r[3..6], &r[6..])
        }
        _ => format!("+{digits}"),
    }
}

impl GraphSim {
    fn has_media(&self, id: &str) -> bool {
        self.lock().media.contains_key(id)
    }

    /// `GET /<PHONE_NUMBER_ID>?fields=…`: the number's details.
    async fn number_info(&self, req: &Req, phone_number_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        if !phone_number_id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(unsupported(req, Some(phone_number_id)));
        }
        if let Err(response) = self.scripted(Table::Number, phone_number_id).await {
            return Ok(response);
        }
        let (_, display) = self.number(phone_number_id);
        Ok(Json(json!({
            "display_phone_number": formatted_display(&display),
            "verified_name": "Test Business",
            "quality_rating": "GREEN",
            "id": phone_number_id
        }))
        .into_response())
    }
}

// ---------------------------------------------------------------------------
// Media

impl GraphSim {
    fn media_info(&self, req: &Req, media_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        let url_token = random_text(32);
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(media) = inner.media.get(media_id) else {
            return Err(unsupported(req, Some(media_id)));
        };
        let body = json!({
            "messaging_product": "whatsapp",
            "url": format!("http://{}/media-download/{media_id}?token={url_token}", req.host),
            "mime_type": media.mime_type,
            "sha256": media.sha256,
            "file_size": media.bytes.len().to_string(),
            "id": media_id
        });
        inner
            .media_urls
            .retain(|_, (_, issued)| now.duration_since(*issued) < MEDIA_URL_TTL);
        inner
            .media_urls
            .insert(url_token, (media_id.to_string(), now));
        Ok(Json(body).into_response())
    }

    fn download_media(&self, req: &Req, media_id: &str) -> Result<Response, ApiError> {
        self.authorize(req)?;
        let inner = self.lock();
        let url_valid = req.param("token").is_none_or(|token| {
            inner
                .media_urls
                .get(token)
                .is_some_and(|(id, issued)| id == media_id && issued.elapsed() < MEDIA_URL_TTL)
        });
        let media = inner.media.get(media_id).filter(|_| url_valid);
        let Some(media) = media else {
            return Err(ApiError::new(100)
                .status(404)
                .details("The media URL is unknown or has expired; fetch a new one."));
        };
        Ok(stream_media(media))
    }
}

/// The media's bytes as a stream of chunks (slices of one shared buffer).
fn stream_media(media: &Media) -> Response {
    let bytes = media.bytes.clone();
    let len = bytes.len();
    let chunks = (0..len).step_by(MEDIA_CHUNK).map(move |start| {
        Ok::<Bytes, Infallible>(bytes.slice(start..len.min(start + MEDIA_CHUNK)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, &media.mime_type)
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn random_text(len: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

// ---------------------------------------------------------------------------
// Errors

/// Meta's error envelope.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: i64,
    title: String,
    details: String,
    /// OAuth errors (the code exchange) carry a bare message and maybe a subcode,
    /// without `error_data`.
    oauth: Option<Option<i64>>,
}

impl ApiError {
    /// The envelope for a code, with the table's title and details and Meta's usual status.
    fn new(code: i64) -> Self {
        let (title, details) = error_text(code);
        ApiError {
            status: status_code(default_status(code)),
            code,
            title: title.to_string(),
            details: details.to_string(),
            oauth: None,
        }
    }

    /// An OAuth error as the token endpoint answers it (HTTP 400).
    fn oauth(code: i64, subcode: Option<i64>, message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code,
            title: message.into(),
            details: String::new(),
            oauth: Some(subcode),
        }
    }

    fn status(mut self, status: u16) -> Self {
        self.status = status_code(status);
        self
    }

    fn title(mut self, title: impl Into<String>) -> Self {
        self.title = title.into();
        self
    }

    fn details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    fn body(&self) -> Value {
        let trace = random_text(27);
        match self.oauth {
            Some(subcode) => {
                let mut error = json!({
                    "message": self.title,
                    "type": "OAuthException",
                    "code": self.code,
                    "fbtrace_id": trace
                });
                if let Some(subcode) = subcode {
                    error["error_subcode"] = json!(subcode);
                }
                json!({ "error": error })
            }
            None => json!({ "error": {
                "message": format!("(#{}) {}", self.code, self.title),
                "type": "OAuthException",
                "code": self.code,
                "error_data": { "messaging_product": "whatsapp", "details": self.details },
                "fbtrace_id": trace
            }}),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("OAuth \"Facebook Platform\" \"invalid_token\""),
            );
        }
        response
    }
}

fn status_code(status: u16) -> StatusCode {
    StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST)
}

/// Meta's usual HTTP status for an error code.
fn default_status(code: i64) -> u16 {
    match code {
        130429 | 131056 => 429,
        1 | 2 | 131000 => 500,
        190 => 401,
        _ => 400,
    }
}

/// Meta's title and details for an error code (unknown codes get generic text).
pub(crate) fn error_text(code: i64) -> (&'static str, &'static str) {
    match code {
        1 => ("An unknown error occurred", "Invalid request or possible server error."),
        2 => ("Service temporarily unavailable", "Temporary due to downtime or due to being overloaded."),
        4 => ("Application request limit reached", "The app has reached its API call rate limit."),
        100 => ("Invalid parameter", "The request included one or more unsupported or misspelled parameters."),
        190 => ("Access token has expired", "Invalid OAuth access token - Cannot parse access token"),
        130429 => ("Rate limit hit", "Cloud API message throughput has been reached."),
        131000 => ("Something went wrong", "Message failed to send due to an unknown error."),
        131026 => ("Message undeliverable", "Unable to deliver message. Reasons can include: the recipient phone number is not a WhatsApp phone number; the recipient has not accepted WhatsApp's new Terms of Service and Privacy Policy; the recipient is using an old WhatsApp version."),
        131031 => ("Account has been locked", "The business account is restricted or disabled for a policy violation, or the data provided could not be verified (for example an incorrect two-step verification PIN)."),
        131047 => ("Re-engagement message", "Message failed to send because more than 24 hours have passed since the customer last replied to this number."),
        131050 => ("Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business", "Recipient stopped marketing messages"),
        131051 => ("Unsupported message type", "Message type is not currently supported."),
        131056 => ("(Business Account, Consumer Account) pair rate limit hit", "Too many messages sent from the sender phone number to the same recipient phone number in a short period of time."),
        131057 => ("Account in maintenance mode", "Business Account is in maintenance mode. This can happen while the account is undergoing a throughput upgrade."),
        132000 => ("Number of parameters does not match the expected number of params", "The number of variable parameter values included in the request did not match the number of variable parameters defined in the template."),
        132001 => ("Template name does not exist in the translation", "The template does not exist in the specified language or the template has not been approved."),
        133016 => ("Account register deregister rate limit exceeded", "Registration or deregistration failed because there were too many attempts for this phone number in a short period of time (10 in 72 hours)."),
        368 => ("Temporarily blocked for policies violations", "The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy."),
        _ => ("Error", "An error occurred."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::post;
    use hmac::{Hmac, Mac};
    use tokio::sync::{mpsc, oneshot};

    const TOKEN: &str = "Bearer test-token";

    async fn start(cfg: SimConfig) -> (GraphSim, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sim = GraphSim::new(cfg);
        tokio::spawn(sim.clone().serve(listener, std::future::pending()));
        (sim, base)
    }

    /// A webhook receiver: every POST's signature header and body, in arrival order.
    async fn receiver() -> (String, mpsc::UnboundedReceiver<(Option<String>, Bytes)>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let app = Router::new().route(
            "/hook",
            post(move |headers: HeaderMap, body: Bytes| {
                let signature = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string);
                let _ = tx.send((signature, body));
                async { StatusCode::OK }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, rx)
    }

    async fn next_webhook(
        rx: &mut mpsc::UnboundedReceiver<(Option<String>, Bytes)>,
    ) -> (Option<String>, Bytes) {
        tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a webhook within 10 s")
            .expect("receiver open")
    }

    fn text_to(to: &str) -> Value {
        json!({
            "messaging_product": "whatsapp",
            "recipient_type": "individual",
            "to": to,
            "type": "text",
            "text": { "body": "Your order has shipped." }
        })
    }

    async fn send(base: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
        send_from(base, "1234", auth, body).await
    }

    async fn send_from(base: &str, number: &str, auth: Option<&str>, body: &Value) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{base}/v23.0/{number}/messages"))
            .json(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn post_json(base: &str, path: &str, body: &Value) -> (u16, Value) {
        let response = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("authorization", TOKEN)
            .json(body)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    async fn get_json(base: &str, path: &str, auth: Option<&str>) -> (u16, Value) {
        let mut request = reqwest::Client::new().get(format!("{base}{path}"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    fn assert_envelope(body: &Value, code: i64) {
        let error = &body["error"];
        assert_eq!(error["code"], code, "{body}");
        assert_eq!(error["type"], "OAuthException");
        let (title, _) = error_text(code);
        assert_eq!(error["message"], format!("(#{code}) {title}"));
        assert_eq!(error["error_data"]["messaging_product"], "whatsapp");
        assert!(error["error_data"]["details"]
            .as_str()
            .is_some_and(|d| !d.is_empty()));
        assert!(error["fbtrace_id"].as_str().is_some_and(|t| !t.is_empty()));
    }

    fn hub_signature(secret: &str, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    #[tokio::test]
    async fn send_answers_meta_success_shape() {
        let (sim, base) = start(SimConfig::default()).await;
        let (status, body) = send(&base, Some(TOKEN), &text_to("+447700900123")).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["messaging_product"], "whatsapp");
        assert_eq!(
            body["contacts"],
            json!([{ "input": "+447700900123", "wa_id": "447700900123" }])
        );
        let wamid = body["messages"][0]["id"].as_str().unwrap();
        assert!(wamid.starts_with("wamid.") && wamid.len() > 20, "{wamid}");

        let (_, again) = send(&base, Some(TOKEN), &text_to("447700900123")).await;
        assert_ne!(again["messages"][0]["id"], body["messages"][0]["id"]);
        assert_eq!(again["contacts"][0]["input"], "447700900123");

        let calls = sim.calls_to("/messages");
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0].method, "POST");
        assert_eq!(calls[0].path, "/v23.0/1234/messages");
        assert_eq!(calls[0].authorization.as_deref(), Some(TOKEN));
        assert_eq!(calls[0].body["to"], "+447700900123");
    }

    #[tokio::test]
    async fn send_to_a_user_id_and_to_wins() {
        let (_sim, base) = start(SimConfig::default()).await;
        let mut by_id = text_to("x");
        by_id.as_object_mut().unwrap().remove("to");
        by_id["recipient"] = json!("US.13491208655302741918");
        let (status, body) = send(&base, Some(TOKEN), &by_id).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body["contacts"],
            json!([{ "input": "US.13491208655302741918", "user_id": "US.13491208655302741918" }])
        );

        let mut both = by_id.clone();
        both["to"] = json!("+15551234567");
        let (_, body) = send(&base, Some(TOKEN), &both).await;
        assert_eq!(
            body["contacts"],
            json!([{ "input": "+15551234567", "wa_id": "15551234567" }])
        );
    }

    #[tokio::test]
    async fn paths_work_without_a_version() {
        let (_sim, base) = start(SimConfig::default()).await;
        let (status, _) = post_json(&base, "/1234/messages", &text_to("15551234567")).await;
        assert_eq!(status, 200);
        let (status, body) = get_json(&base, "/v23.0/1234/nothing-here", Some(TOKEN)).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], 100);
    }

    #[tokio::test]
    async fn tokens_are_required() {
        let cfg = SimConfig {
            valid_tokens: vec!["good".into()],
            ..SimConfig::default()
        };
        let (_sim, base) = start(cfg).await;
        let (status, body) = send(&base, None, &text_to("15551234567")).await;
        assert_eq!(status, 401);
        assert_envelope(&body, 190);
        let (status, body) = send(&base, Some("Bearer wrong"), &text_to("15551234567")).await;
        assert_eq!(status, 401);
        assert_envelope(&body, 190);
        let (status, _) = send(&base, Some("Bearer good"), &text_to("15551234567")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn malformed_sends_answer_100() {
        let (_sim, base) = start(SimConfig::default()).await;
        let mut cases = Vec::new();
        let mut no_product = text_to("15551234567");
        no_product
            .as_object_mut()
            .unwrap()
            .remove("messaging_product");
        cases.push(no_product);
        let mut no_to = text_to("15551234567");
        no_to.as_object_mut().unwrap().remove("to");
        cases.push(no_to);
        cases.push(text_to("not-a-number"));
        let mut no_type = text_to("15551234567");
        no_type.as_object_mut().unwrap().remove("type");
        cases.push(no_type);
        let mut no_text = text_to("15551234567");
        no_text["text"] = json!({});
        cases.push(no_text);
        let mut bad_id = text_to("x");
        bad_id.as_object_mut().unwrap().remove("to");
        bad_id["recipient"] = json!("13491208655302741918");
        cases.push(bad_id);
        for case in cases {
            let (status, body) = send(&base, Some(TOKEN), &case).await;
            assert_eq!(status, 400, "{case}");
            assert_envelope(&body, 100);
        }
    }

    #[tokio::test]
    async fn scripted_failure_then_success() {
        let (sim, base) = start(SimConfig::default()).await;
        sim.script_recipient(
            "+15551234567",
            Script::Fail {
                code: 131000,
                http_status: 500,
                times: 2,
            },
        );
        for _ in 0..2 {
            let (status, body) = send(&base, Some(TOKEN), &text_to("+15551234567")).await;
            assert_eq!(status, 500);
            assert_envelope(&body, 131000);
        }
        let (status, _) = send(&base, Some(TOKEN), &text_to("+15551234567")).await;
        assert_eq!(status, 200);
        let (status, _) = send(&base, Some(TOKEN), &text_to("+15557654321")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn hang_holds_the_request_once() {
        let (sim, base) = start(SimConfig::default()).await;
        sim.script_recipient("15551234567", Script::Hang { times: 1 });
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let held = client
            .post(format!("{base}/v23.0/1234/messages"))
            .header("authorization", TOKEN)
            .json(&text_to("15551234567"))
            .send()
            .await;
        assert!(held.is_err_and(|e| e.is_timeout()));
        let (status, _) = send(&base, Some(TOKEN), &text_to("15551234567")).await;
        assert_eq!(status, 200);
        for _ in 0..100 {
            if sim.hanging() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            sim.hanging(),
            0,
            "the held request is released when its client leaves"
        );
    }

    #[tokio::test]
    async fn shutdown_releases_held_requests() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let sim = GraphSim::new(SimConfig::default());
        sim.script_recipient("15551234567", Script::Hang { times: 1 });
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(sim.clone().serve(listener, async {
            let _ = stopped.await;
        }));
        let held = tokio::spawn({
            let base = base.clone();
            async move { send(&base, Some(TOKEN), &text_to("15551234567")).await }
        });
        while sim.hanging() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.send(()).unwrap();
        let (status, body) = held.await.unwrap();
        assert_eq!(status, 500);
        assert_envelope(&body, 2);
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn throughput_limit_answers_130429() {
        let (_sim, base) = start(SimConfig::default()).await;
        let sends = (0..81).map(|i| {
            let base = base.clone();
            async move {
                let to = format!("1555000{i:04}");
                send(&base, Some(TOKEN), &text_to(&to)).await
            }
        });
        let results = futures_util::future::join_all(sends).await;
        let limited: Vec<_> = results
            .iter()
            .filter(|(status, _)| *status == 429)
            .collect();
        assert!(
            !limited.is_empty(),
            "at least one of 81 sends is over 80 mps"
        );
        for (_, body) in limited {
            assert_envelope(body, 130429);
        }
        // Another number has its own limit.
        let (status, _) = send_from(&base, "5678", Some(TOKEN), &text_to("15551234567")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn pair_limit_answers_131056() {
        let cfg = SimConfig {
            pair_burst: 1,
            ..SimConfig::default()
        };
        let (_sim, base) = start(cfg).await;
        let (status, _) = send(&base, Some(TOKEN), &text_to("15551234567")).await;
        assert_eq!(status, 200);
        let (status, body) = send(&base, Some(TOKEN), &text_to("+15551234567")).await;
        assert_eq!(status, 429);
        assert_envelope(&body, 131056);
        let (status, _) = send(&base, Some(TOKEN), &text_to("15557654321")).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn accepted_messages_get_signed_status_webhooks_in_order() {
        let (url, mut rx) = receiver().await;
        let mut numbers = HashMap::new();
        numbers.insert(
            "1234".to_string(),
            ("300100200300400".to_string(), "15551230000".to_string()),
        );
        let cfg = SimConfig {
            app_secret: Some("s3cret".into()),
            webhook_url: Some(url),
            status_delay: Duration::from_millis(5),
            numbers,
            ..SimConfig::default()
        };
        let (_sim, base) = start(cfg).await;
        let mut message = text_to("+447700900123");
        message["biz_opaque_callback_data"] = json!("evt-7f3a");
        let (_, sent) = send(&base, Some(TOKEN), &message).await;
        let wamid = sent["messages"][0]["id"].clone();
        for expected in ["sent", "delivered", "read"] {
            let (signature, raw) = next_webhook(&mut rx).await;
            assert_eq!(signature.unwrap(), hub_signature("s3cret", &raw));
            let body: Value = serde_json::from_slice(&raw).unwrap();
            assert_eq!(body["object"], "whatsapp_business_account");
            assert_eq!(body["entry"][0]["id"], "300100200300400");
            let change = &body["entry"][0]["changes"][0];
            assert_eq!(change["field"], "messages");
            let value = &change["value"];
            assert_eq!(value["messaging_product"], "whatsapp");
            assert_eq!(value["metadata"]["phone_number_id"], "1234");
            assert_eq!(value["metadata"]["display_phone_number"], "15551230000");
            let status = &value["statuses"][0];
            assert_eq!(status["id"], wamid);
            assert_eq!(status["status"], expected);
            assert_eq!(status["recipient_id"], "447700900123");
            assert_eq!(status["biz_opaque_callback_data"], "evt-7f3a");
            let ts: u64 = status["timestamp"].as_str().unwrap().parse().unwrap();
            assert!(ts > 1_700_000_000);
            if expected != "read" {
                assert_eq!(status["pricing"]["pricing_model"], "PMP");
            }
        }
    }

    #[tokio::test]
    async fn fail_async_posts_a_failed_status() {
        let (url, mut rx) = receiver().await;
        let cfg = SimConfig {
            webhook_url: Some(url),
            status_delay: Duration::from_millis(5),
            ..SimConfig::default()
        };
        let (sim, base) = start(cfg).await;
        sim.script_recipient("447700900124", Script::FailAsync { code: 131050 });
        let (status, sent) = send(&base, Some(TOKEN), &text_to("+447700900124")).await;
        assert_eq!(status, 200);
        let (signature, raw) = next_webhook(&mut rx).await;
        assert!(signature.is_none(), "unsigned without an app secret");
        let body: Value = serde_json::from_slice(&raw).unwrap();
        let status = &body["entry"][0]["changes"][0]["value"]["statuses"][0];
        assert_eq!(status["id"], sent["messages"][0]["id"]);
        assert_eq!(status["status"], "failed");
        assert_eq!(status["recipient_id"], "447700900124");
        let error = &status["errors"][0];
        assert_eq!(error["code"], 131050);
        assert_eq!(error["title"], error_text(131050).0);
        assert_eq!(error["message"], error["title"]);
        assert_eq!(error["error_data"]["details"], error_text(131050).1);
        assert!(error["href"].as_str().unwrap().contains("error-codes"));
        assert_eq!(body["entry"][0]["id"], DEFAULT_WABA_ID);
        assert_eq!(
            body["entry"][0]["changes"][0]["value"]["metadata"]["display_phone_number"],
            DEFAULT_DISPLAY_NUMBER
        );
    }

    #[tokio::test]
    async fn codes_exchange_once() {
        let cfg = SimConfig {
            app_secret: Some("app-secret".into()),
            valid_tokens: vec!["system-user".into()],
            ..SimConfig::default()
        };
        let (sim, base) = start(cfg).await;
        let path = "/v23.0/oauth/access_token?client_id=42&client_secret=app-secret&code=c0de";
        let (status, body) = get_json(&base, path, None).await;
        assert_eq!(status, 200, "{body}");
        let token = body["access_token"].as_str().unwrap().to_string();
        assert!(token.starts_with("EAAG"));
        assert_eq!(body["token_type"], "bearer");
        assert_eq!(body["expires_in"], 5183944);
        let calls = sim.calls_to("/oauth/access_token");
        assert_eq!(
            calls[0].query,
            "client_id=42&client_secret=app-secret&code=c0de"
        );

        let (status, body) = get_json(&base, path, None).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], 100);
        assert_eq!(body["error"]["error_subcode"], 36009);
        assert_eq!(body["error"]["type"], "OAuthException");
        assert_eq!(
            body["error"]["message"],
            "This authorization code has been used."
        );

        sim.expire_code("old");
        let expired = "/oauth/access_token?client_id=42&client_secret=app-secret&code=old";
        let (status, body) = get_json(&base, expired, None).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["error_subcode"], 36007);
        assert_eq!(
            body["error"]["message"],
            "This authorization code has expired."
        );

        let (status, body) = get_json(&base, "/v23.0/oauth/access_token?client_id=42", None).await;
        assert_eq!(status, 400);
        assert_eq!(body["error"]["code"], 100);
        let wrong = "/oauth/access_token?client_id=42&client_secret=nope&code=fresh";
        let (status, _) = get_json(&base, wrong, None).await;
        assert_eq!(status, 400);

        // The exchanged token works for the next onboarding steps.
        let response = reqwest::Client::new()
            .post(format!("{base}/v23.0/300100200300400/subscribed_apps"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, json!({ "success": true }));
    }

    #[tokio::test]
    async fn subscribed_apps_follow_scripts() {
        let (sim, base) = start(SimConfig::default()).await;
        sim.script_subscribe("300100200300400", Script::fail(131000, 1));
        let path = "/v23.0/300100200300400/subscribed_apps";
        let (status, body) = post_json(&base, path, &json!({})).await;
        assert_eq!(status, 500);
        assert_envelope(&body, 131000);
        let (status, body) = post_json(&base, path, &json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({ "success": true }));
    }

    #[tokio::test]
    async fn register_checks_the_pin_and_follows_scripts() {
        let (sim, base) = start(SimConfig::default()).await;
        let path = "/v23.0/1234/register";
        let pin = json!({ "messaging_product": "whatsapp", "pin": "123456" });
        let (status, body) = post_json(
            &base,
            path,
            &json!({ "messaging_product": "whatsapp", "pin": "12345" }),
        )
        .await;
        assert_eq!(status, 400);
        assert_envelope(&body, 100);

        sim.script_register("1234", Script::fail(133016, 1));
        let (status, body) = post_json(&base, path, &pin).await;
        assert_eq!(status, 400);
        assert_envelope(&body, 133016);
        sim.script_register("1234", Script::fail(131031, 1));
        let (_, body) = post_json(&base, path, &pin).await;
        assert_envelope(&body, 131031);
        sim.script_register(
            "1234",
            Script::Fail {
                code: 131000,
                http_status: 500,
                times: 1,
            },
        );
        let (status, _) = post_json(&base, path, &pin).await;
        assert_eq!(status, 500);
        let (status, body) = post_json(&base, path, &pin).await;
        assert_eq!(status, 200);
        assert_eq!(body, json!({ "success": true }));

        sim.script_register("1234", Script::Hang { times: 1 });
        let held = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .header("authorization", TOKEN)
            .json(&pin)
            .timeout(Duration::from_millis(300))
            .send()
            .await;
        assert!(held.is_err_and(|e| e.is_timeout()));
    }

    #[tokio::test]
    async fn register_is_limited_to_ten_per_72_hours() {
        let (_sim, base) = start(SimConfig::default()).await;
        let pin = json!({ "messaging_product": "whatsapp", "pin": "123456" });
        for _ in 0..REGISTER_LIMIT {
            let (status, _) = post_json(&base, "/v23.0/777/register", &pin).await;
            assert_eq!(status, 200);
        }
        let (status, body) = post_json(&base, "/v23.0/777/register", &pin).await;
        assert_eq!(status, 400);
        assert_envelope(&body, 133016);
    }

    #[tokio::test]
    async fn media_metadata_and_download() {
        let (sim, base) = start(SimConfig::default()).await;
        let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        sim.add_media("9001", "image/jpeg", Bytes::from(bytes.clone()));

        let (status, body) = get_json(&base, "/v23.0/9001?phone_number_id=1234", None).await;
        assert_eq!(status, 401);
        assert_envelope(&body, 190);
        let (status, info) = get_json(&base, "/v23.0/9001", Some(TOKEN)).await;
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["messaging_product"], "whatsapp");
        assert_eq!(info["id"], "9001");
        assert_eq!(info["mime_type"], "image/jpeg");
        assert_eq!(info["file_size"], "200000");
        assert_eq!(info["sha256"], base64(&Sha256::digest(&bytes)));
        let url = info["url"].as_str().unwrap();
        assert!(url.starts_with(&format!("{base}/media-download/9001?token=")));

        let client = reqwest::Client::new();
        let anonymous = client.get(url).send().await.unwrap();
        assert_eq!(anonymous.status(), 401);
        let download = client
            .get(url)
            .header("authorization", TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(download.status(), 200);
        assert_eq!(download.headers()["content-type"], "image/jpeg");
        assert_eq!(download.bytes().await.unwrap().as_ref(), bytes.as_slice());

        let stale = format!("{base}/media-download/9001?token=unknown");
        let response = client
            .get(stale)
            .header("authorization", TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        let (status, body) = get_json(&base, "/v23.0/404404", Some(TOKEN)).await;
        assert_eq!(status, 404);
        assert_eq!(body["error"]["code"], 100);
    }

    #[test]
    fn every_listed_code_has_meta_text() {
        for code in [
            1, 2, 4, 100, 190, 130429, 131000, 131026, 131031, 131047, 131050, 131051, 131056,
            131057, 132000, 132001, 133016, 368,
        ] {
            assert_ne!(error_text(code).0, "Error", "{code}");
        }
        assert_eq!(default_status(130429), 429);
        assert_eq!(default_status(131056), 429);
        assert_eq!(default_status(131000), 500);
        assert_eq!(default_status(131026), 400);
    }

    #[test]
    fn version_segments_are_optional() {
        assert_eq!(route_segments("/v23.0/1234/messages"), ["1234", "messages"]);
        assert_eq!(route_segments("/v25/1234/messages"), ["1234", "messages"]);
        assert_eq!(route_segments("/1234/messages"), ["1234", "messages"]);
        assert_eq!(route_segments("/vx/1234"), ["vx", "1234"]);
    }
}
