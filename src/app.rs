//! The running application: the log, the store, the configuration and the shared
//! state the HTTP handlers and workers use.

use std::{collections::HashMap, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use wabridge_events::{
    backends::{
        embedded::{EmbeddedConfig, EmbeddedLog},
        jetstream::JetStreamLog,
    },
    EventLog,
};
use wabridge_handlers::commands::Ctx;
use wabridge_projections::{Progress, Store};

use crate::{config::Config, metrics::Metrics};

/// Shared application state: one `Arc`, so a clone per request is one atomic add.
#[derive(Clone)]
pub struct App(Arc<AppState>);

impl std::ops::Deref for App {
    type Target = AppState;
    fn deref(&self) -> &AppState {
        &self.0
    }
}

/// What [`App`] holds.
pub struct AppState {
    /// Configuration.
    pub cfg: Arc<Config>,
    /// Log, store and projection progress for commands.
    pub ctx: Ctx,
    /// Counters and histograms for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Per key id, the last minute a use was recorded (`last_used_at` throttle).
    pub key_use: Arc<std::sync::Mutex<HashMap<String, i64>>>,
    /// Unauthenticated failures waiting to be summarised (see `security`).
    pub auth_failures: Arc<crate::failures::FailureCounts>,
    /// The per-workspace send limiter (its state in the log's key-value store).
    pub limiter: Arc<wabridge_handlers::ratelimit::SharedLimiter>,
    /// Sends refused by the limiter, waiting to be appended.
    pub rejections: Arc<wabridge_handlers::commands::send::Rejections>,
    /// Rebuilds started from the API in this process.
    pub rebuilds: Arc<crate::replay::Rebuilds>,
    /// The Graph API client of the media proxy.
    pub graph: Arc<wabridge_handlers::sender::graph::Graph>,
    /// Follows the domain log for long-polls and delivery workers.
    pub hub: Arc<wabridge_handlers::feed::Hub>,
    /// Workspaces known to exist (they are never deleted).
    pub known_workspaces: Arc<std::sync::RwLock<std::collections::HashSet<wabridge_events::Slug>>>,
}

/// Opens the configured log: JetStream when `NATS_URL` is set, else the embedded one.
pub async fn open_log(cfg: &Config) -> anyhow::Result<Arc<dyn EventLog>> {
    Ok(match &cfg.nats {
        Some(js) => Arc::new(JetStreamLog::connect(js.clone()).await?),
        None => {
            let mut e = EmbeddedConfig::new(cfg.data_dir.join("events.db"));
            e.duplicate_window = cfg.dedup_window;
            e.raw_max_age = Some(cfg.raw_retention);
            e.namespace = cfg.namespace.clone();
            Arc::new(
                EmbeddedLog::open(e)
                    .await
                    .context("opening the embedded event log")?,
            )
        }
    })
}

impl App {
    /// Where and how to call Meta's Graph API.
    pub fn graph_config(&self) -> wabridge_handlers::sender::graph::GraphConfig {
        wabridge_handlers::sender::graph::GraphConfig {
            base_url: self.cfg.meta_graph_url.clone(),
            version: self.cfg.meta_graph_version.clone(),
            timeout: self.cfg.graph_timeout,
        }
    }

    /// What the projections need from the configuration (the audit key).
    pub fn projection_keys(&self) -> wabridge_projections::views::Keys {
        wabridge_projections::views::Keys {
            audit: self.cfg.audit_signing_key.clone(),
        }
    }

    /// Marks this process as applying the projections itself (a host command that
    /// keeps them fresh). Only before the app is shared.
    pub fn set_projections_local(&mut self) {
        Arc::get_mut(&mut self.0)
            .expect("the app is not shared yet")
            .ctx
            .projections_local = true;
    }

    /// Connects to the log and the store (each failing within seconds).
    pub async fn build(cfg: Config) -> anyhow::Result<App> {
        let log = tokio::time::timeout(Duration::from_secs(15), open_log(&cfg))
            .await
            .map_err(|_| anyhow::anyhow!("timed out opening the event log"))??;
        let store = tokio::time::timeout(
            Duration::from_secs(15),
            Store::connect(cfg.database_url.expose_secret()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out connecting to DATABASE_URL"))??;
        let projections_local = cfg.roles.workers;
        let metrics = Arc::new(Metrics::default());
        let log: Arc<dyn EventLog> = Arc::new(crate::metrics::TimedLog::new(log, metrics.clone()));
        // The followers of what happens now share one subscription to the domain stream.
        let log: Arc<dyn EventLog> = Arc::new(wabridge_events::tail::SharedTail::new(log));
        let limiter = Arc::new(wabridge_handlers::ratelimit::SharedLimiter::new(
            log.clone(),
        ));
        let graph = Arc::new(wabridge_handlers::sender::graph::Graph::new(
            wabridge_handlers::sender::graph::GraphConfig {
                base_url: cfg.meta_graph_url.clone(),
                version: cfg.meta_graph_version.clone(),
                timeout: cfg.graph_timeout,
            },
        )?);
        Ok(App(Arc::new(AppState {
            graph,
            hub: wabridge_handlers::feed::Hub::new(log.clone()),
            limiter,
            rejections: Arc::default(),
            cfg: Arc::new(cfg),
            ctx: Ctx {
                log,
                store,
                progress: Progress::default(),
                tokens: Arc::default(),
                projections_local,
            },
            metrics,
            key_use: Arc::default(),
            known_workspaces: Arc::default(),
            auth_failures: Arc::default(),
            rebuilds: Arc::default(),
        })))
    }
}
