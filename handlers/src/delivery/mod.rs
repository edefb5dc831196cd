//! Delivery to the business's apps by outbound webhooks: the `delivery` unit of
//! work runs a [`worker::Worker`] per endpoint (its own queue, one request at a
//! time, a per-request timeout), started from the endpoints read model and told by
//! the domain log when an endpoint's settings change. Attempts are events
//! (`delivery.attempted`), so delivery state is projected from the log like every
//! read model.

pub mod retry;
pub mod sign;
pub mod target;
pub mod worker;

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::StreamExt;
use tokio::{sync::watch, task::JoinSet};
use wabridge_events::{DomainEvent, Slug, StreamKind};
use wabridge_projections::views::endpoints as view;

use crate::{commands::Ctx, feed::Hub, vault::KeyRing};

/// The unit's name (its actor on the events it appends).
pub const NAME: &str = "delivery";

/// The vault context an endpoint's signing secret is sealed under.
pub fn seal_context(endpoint_id: &str) -> String {
    format!("endpoint:{endpoint_id}:secret")
}

/// The delivery settings.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// One request's deadline (`WABRIDGE_DELIVERY_TIMEOUT`, 15 s).
    pub timeout: Duration,
    /// The retry policy (`WABRIDGE_DELIVERY_RETRY_BASE`, `…_GIVE_UP_AFTER`).
    pub policy: retry::RetryPolicy,
    /// `WABRIDGE_ALLOW_PRIVATE_ENDPOINTS`.
    pub allow_private: bool,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            timeout: Duration::from_secs(15),
            policy: retry::RetryPolicy::default(),
            allow_private: false,
        }
    }
}

/// What every endpoint worker shares.
pub struct Shared {
    /// Commands' context (log, read models).
    pub ctx: Ctx,
    /// The process's event hub (wakes workers; caches recent events).
    pub hub: Arc<Hub>,
    /// The vault's keys (endpoint secrets are sealed).
    pub keys: Option<KeyRing>,
    /// The HTTP client (no redirects, no proxy, public addresses only).
    pub client: reqwest::Client,
    /// The retry policy.
    pub policy: retry::RetryPolicy,
    /// Whether private addresses are allowed.
    pub allow_private: bool,
    /// One request's deadline.
    pub timeout: Duration,
}

/// The HTTP client deliveries use.
pub fn client(cfg: &DeliveryConfig) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .pool_max_idle_per_host(4)
        .user_agent(concat!("wabridge-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(target::PublicOnly {
            allow_private: cfg.allow_private,
        }))
        .build()?)
}

/// Runs every endpoint's worker, starting and telling them as endpoints change.
/// Every worker belongs to this future: dropping it (the unit's lease is lost)
/// stops them.
pub async fn run(
    ctx: Ctx,
    hub: Arc<Hub>,
    keys: Option<KeyRing>,
    cfg: DeliveryConfig,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        client: client(&cfg)?,
        ctx,
        hub,
        keys,
        policy: cfg.policy,
        allow_private: cfg.allow_private,
        timeout: cfg.timeout,
    });
    let ctx = &shared.ctx;
    let head = ctx.log.last_seq(StreamKind::Domain).await?;
    ctx.wait(view::NAME, head).await?;
    let mut tasks = JoinSet::new();
    let mut controls: HashMap<(String, String), watch::Sender<u64>> = HashMap::new();
    let start = |tasks: &mut JoinSet<()>,
                 controls: &mut HashMap<(String, String), watch::Sender<u64>>,
                 ws: Slug,
                 id: String,
                 seq: u64| {
        let key = (ws.to_string(), id.clone());
        if controls.contains_key(&key) {
            return;
        }
        let (tx, rx) = watch::channel(seq);
        controls.insert(key, tx);
        tasks.spawn(worker::Worker::run(shared.clone(), ws, id, rx));
    };
    for ep in view::all_live(&ctx.store).await? {
        if let Ok(ws) = Slug::parse(&ep.workspace) {
            start(&mut tasks, &mut controls, ws, ep.id, 0);
        }
    }
    let mut events = ctx
        .log
        .follow_ephemeral(StreamKind::Domain, head + 1)
        .await?;
    loop {
        tokio::select! {
            next = events.next() => {
                let Some(ev) = next else { anyhow::bail!("the domain stream ended") };
                let ev = ev?;
                let t = ev.envelope.event_type.as_str();
                if !(t.starts_with("endpoint.") || t == "delivery.redelivery_requested") {
                    continue;
                }
                let Some(ws) = ev.envelope.workspace.clone() else { continue };
                let decoded = ev.decoded()?;
                if let DomainEvent::EndpointCreated(e) = decoded {
                    start(&mut tasks, &mut controls, ws, e.endpoint_id.clone(), ev.seq);
                    continue;
                }
                let Some(id) = view::endpoint_of(decoded).map(str::to_owned) else {
                    continue;
                };
                let key = (ws.to_string(), id);
                let deleted = t == "endpoint.deleted";
                if let Some(tx) = controls.get(&key) {
                    tx.send_replace(ev.seq);
                }
                if deleted {
                    controls.remove(&key);
                }
            }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}
