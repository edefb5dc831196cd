//! Serving: the HTTP API on a given listener, and the workers (projections and
//! reactors) under the deployment's workers lease, with graceful shutdown that lets
//! in-flight appends finish, within a deadline.
//!
//! Connections are bounded: request headers must arrive within
//! `WABRIDGE_HEADER_TIMEOUT` (which also closes idle keep-alive connections), at most
//! `WABRIDGE_MAX_CONNECTIONS` are open at once (more are closed at accept), and
//! shutdown waits at most `WABRIDGE_SHUTDOWN_TIMEOUT` for open connections.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context;
use axum::extract::ConnectInfo;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::graceful::GracefulShutdown,
};
use tokio::{net::TcpListener, task::JoinSet};
use tower::Service;
use wabridge_handlers::{
    commands::{unit_lease, WORKER_UNITS},
    redrive,
    webhooks::processor,
};
use wabridge_projections::{projection, views, Driver, Reactor};

use crate::{app::App, membership};
use wabridge_events::EventLog;

use wabridge_handlers::sender::{Sender, SenderConfig};

/// Starts one unit of work (its partition 0) into `tasks`.
fn spawn_unit(app: &App, unit: &str, tasks: &mut JoinSet<()>) {
    let driver = Driver {
        log: app.ctx.log.clone(),
        store: app.ctx.store.clone(),
        progress: app.ctx.progress.clone(),
    };
    match unit {
        // Every read model lives in one database: one subscription and one
        // transaction per batch for all of them (each keeps its own checkpoint).
        "projections" => {
            let (d, keys) = (driver, app.projection_keys());
            tasks.spawn(supervise("projections", move || {
                let (d, keys) = (d.clone(), keys.clone());
                async move { d.run(&views::follower(&keys)).await }
            }));
        }
        "webhook_processor" => {
            let (d, ctx) = (driver, app.ctx.clone());
            tasks.spawn(supervise(processor::NAME, move || {
                let (d, ctx) = (d.clone(), ctx.clone());
                async move { d.run(&processor::follower(ctx)).await }
            }));
        }
        "redrive" => {
            let (d, ctx, keys) = (driver, app.ctx.clone(), app.projection_keys());
            tasks.spawn(supervise(redrive::NAME, move || {
                let (d, ctx, keys) = (d.clone(), ctx.clone(), keys.clone());
                async move {
                    let mut consumers = projection::reactors(views::all(&keys));
                    consumers.push(
                        Arc::new(processor::Processor::strict(ctx.clone())) as Arc<dyn Reactor>
                    );
                    d.run(&redrive::follower(ctx, d.clone(), consumers)).await
                }
            }));
        }
        "sender" => {
            let app2 = app.clone();
            tasks.spawn(supervise(wabridge_handlers::sender::NAME, move || {
                let app = app2.clone();
                async move {
                    let cfg = SenderConfig::new(app.graph_config(), app.cfg.number_mps);
                    Sender::new(app.ctx.clone(), app.cfg.token_keys.clone(), cfg)?
                        .run()
                        .await
                }
            }));
        }
        "onboarding" => {
            let app2 = app.clone();
            tasks.spawn(supervise(wabridge_handlers::onboarding::NAME, move || {
                let app = app2.clone();
                async move {
                    let meta_app = wabridge_handlers::commands::onboarding::MetaApp {
                        id: app.cfg.meta_app_id.clone(),
                        secrets: app.cfg.meta_app_secrets.clone(),
                    };
                    wabridge_handlers::onboarding::Onboarder::new(
                        app.ctx.clone(),
                        app.cfg.token_keys.clone(),
                        meta_app,
                        app.graph_config(),
                    )?
                    .run()
                    .await
                }
            }));
        }
        "delivery" => {
            let app2 = app.clone();
            tasks.spawn(supervise(wabridge_handlers::delivery::NAME, move || {
                let app = app2.clone();
                async move {
                    wabridge_handlers::delivery::run(
                        app.ctx.clone(),
                        app.hub.clone(),
                        app.cfg.token_keys.clone(),
                        app.cfg.delivery.clone(),
                    )
                    .await
                }
            }));
        }
        "audit_retention" => {
            let app2 = app.clone();
            tasks.spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let cutoff = wabridge_events::Timestamp::now().minus(app2.cfg.audit_retention);
                    if let Err(e) = wabridge_handlers::commands::audit::retention_pass(
                        &app2.ctx,
                        app2.cfg.audit_signing_key.as_ref(),
                        cutoff,
                    )
                    .await
                    {
                        tracing::warn!(error = %e, "audit retention pass failed");
                    }
                }
            });
        }
        other => tracing::error!(unit = other, "unknown unit of work"),
    }
}

/// Restarts a worker that fails, with a pause, for ever.
async fn supervise<F, Fut>(name: &'static str, mut start: F)
where
    F: FnMut() -> Fut + Send,
    Fut: Future<Output = anyhow::Result<()>> + Send,
{
    loop {
        if let Err(e) = start().await {
            tracing::error!(worker = name, error = %format!("{e:#}"), "worker stopped; restarting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// This process's lease holder id: `host/pid/nonce`.
fn holder_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}/{}/{}", std::process::id(), &nonce[..8])
}

/// Whether a lease holder is a process of this host that no longer runs (it died
/// without releasing the lease): then its lease need not be waited out.
fn holder_died_here(holder: &str, me: &str) -> bool {
    let (Some((host, rest)), Some((my_host, _))) = (holder.split_once('/'), me.split_once('/'))
    else {
        return false;
    };
    let Some(pid) = rest.split('/').next().and_then(|p| p.parse::<u32>().ok()) else {
        return false;
    };
    host == my_host
        && pid != std::process::id()
        && std::path::Path::new("/proc/self").exists()
        && !std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The workers of this instance: one keeper per unit of work, each running its unit
/// only while it holds the unit's lease. Instances with the workers role share the
/// units: each renews its membership (see [`crate::membership`]), each unit belongs
/// to one live member and runs only there, and when a member dies its units move
/// to the others once its membership and leases lapse (`WABRIDGE_LEASE_TTL`).
struct Workers {
    stop: Arc<tokio::sync::Notify>,
    keepers: Vec<tokio::task::JoinHandle<()>>,
}

impl Workers {
    /// Joins the members, takes the leases of the units this instance owns (waiting
    /// out one lease period for those another instance still holds: it hands them
    /// over at its next round, or it died), starts those units, and keeps watching
    /// the others.
    async fn start(app: &App) -> anyhow::Result<Workers> {
        let me = holder_id();
        let ttl = app.cfg.lease_ttl;
        let log = app.ctx.log.clone();
        let dead = {
            let me = me.clone();
            move |m: &str| holder_died_here(m, &me)
        };
        let members = membership::renew(&*log, &me, ttl, &dead)
            .await
            .context("joining the workers' members")?;
        let (members_tx, members_rx) = tokio::sync::watch::channel(members);
        let units: Vec<String> = WORKER_UNITS.iter().map(|u| unit_lease(u, 0)).collect();
        let mut held = vec![false; units.len()];
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
        loop {
            let members = members_tx.borrow().clone();
            for (i, lease_name) in units.iter().enumerate() {
                if held[i] || membership::owner(i, &members) != Some(me.as_str()) {
                    continue;
                }
                let lease = log
                    .acquire_lease(lease_name, &me, ttl, None)
                    .await
                    .context("taking a unit of work's lease")?;
                held[i] = lease.holder == me
                    || (holder_died_here(&lease.holder, &me)
                        && log
                            .acquire_lease(lease_name, &me, ttl, Some(&lease.holder))
                            .await?
                            .holder
                            == me);
            }
            let owned = (0..units.len())
                .filter(|i| membership::owner(*i, &members) == Some(me.as_str()))
                .count();
            if held.iter().filter(|h| **h).count() == owned
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok(m) = membership::renew(&*log, &me, ttl, &dead).await {
                members_tx.send_replace(m);
            }
        }
        let taken: Vec<&str> = units
            .iter()
            .zip(&held)
            .filter(|(_, h)| **h)
            .map(|(u, _)| u.as_str())
            .collect();
        if taken.len() == units.len() {
            tracing::info!(holder = %me, "running every unit of work");
        } else {
            tracing::info!(holder = %me, running = ?taken, "other instances run the other units of work");
        }
        let stop = Arc::new(tokio::sync::Notify::new());
        let mut keepers: Vec<_> = WORKER_UNITS
            .iter()
            .zip(held)
            .enumerate()
            .map(|(index, (unit, held))| {
                let keeper = Keeper {
                    app: app.clone(),
                    unit,
                    index,
                    me: me.clone(),
                    members: members_rx.clone(),
                };
                tokio::spawn(keeper.keep(held, stop.clone()))
            })
            .collect();
        keepers.push(tokio::spawn(renew_membership(
            log,
            me,
            ttl,
            members_tx,
            stop.clone(),
        )));
        Ok(Workers { stop, keepers })
    }

    /// Stops the workers, releases their leases and leaves the members.
    async fn stop(self) {
        self.stop.notify_waiters();
        for k in self.keepers {
            let _ = k.await;
        }
    }
}

/// Waits one renewal round (a third of the lease period `ttl`): `false` once
/// stopped.
async fn next_round(
    stopped: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    ttl: Duration,
) -> bool {
    tokio::select! {
        _ = stopped => false,
        _ = tokio::time::sleep(ttl / 3) => true,
    }
}

/// Renews this instance's membership every lease round and publishes the members;
/// leaves them when stopped.
async fn renew_membership(
    log: Arc<dyn EventLog>,
    me: String,
    ttl: Duration,
    members: tokio::sync::watch::Sender<Vec<String>>,
    stop: Arc<tokio::sync::Notify>,
) {
    let stopped = stop.notified();
    tokio::pin!(stopped);
    while next_round(stopped.as_mut(), ttl).await {
        match membership::renew(&*log, &me, ttl, |m| holder_died_here(m, &me)).await {
            Ok(m) => {
                members.send_if_modified(|current| {
                    let changed = *current != m;
                    *current = m;
                    changed
                });
            }
            // The keepers go on with the last members; when renewals keep failing
            // the others drop this instance, and its leases lapse too.
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "renewing the membership failed"),
        }
    }
    membership::leave(&*log, &me).await;
}

/// One unit's keeper.
struct Keeper {
    app: App,
    unit: &'static str,
    /// Its place in [`WORKER_UNITS`] (how units are dealt to members).
    index: usize,
    me: String,
    members: tokio::sync::watch::Receiver<Vec<String>>,
}

impl Keeper {
    /// Whether this instance owns the unit (it is always among the members it
    /// knows).
    fn owns(&self) -> bool {
        membership::owner(self.index, &self.members.borrow()) == Some(self.me.as_str())
    }

    /// Runs the unit while its lease is held and this instance owns it, renewing the
    /// lease; hands it over when another live member owns it; when the lease cannot
    /// be renewed in time (another instance took it, or the log is unreachable) the
    /// unit stops at once and this instance stands by until it can take it again.
    async fn keep(self, held: bool, stop: Arc<tokio::sync::Notify>) {
        let (app, unit, me) = (&self.app, self.unit, &self.me);
        let ttl = app.cfg.lease_ttl;
        let log = app.ctx.log.clone();
        let lease_name = unit_lease(unit, 0);
        let change = |what: &'static str| {
            app.metrics
                .lease_changes
                .get_or_create(&crate::metrics::LeaseLabels {
                    unit: format!("{unit}.0"),
                    change: what,
                })
                .inc();
        };
        let mut tasks = JoinSet::new();
        if held {
            change("acquired");
            spawn_unit(app, unit, &mut tasks);
        }
        let mut renewed = tokio::time::Instant::now();
        let stopped = stop.notified();
        tokio::pin!(stopped);
        while next_round(stopped.as_mut(), ttl).await {
            let running = !tasks.is_empty();
            if !self.owns() {
                if running {
                    // Stopping a unit mid-batch is safe: its effects commit with
                    // its checkpoint, and the sender records each attempt before
                    // the call.
                    tracing::info!(unit, "another instance owns the unit; handing it over");
                    change("handed_over");
                    tasks.shutdown().await;
                    if let Err(e) = log.release_lease(&lease_name, me).await {
                        tracing::warn!(unit, error = %e, "releasing a unit's lease failed");
                    }
                }
                continue;
            }
            let held = match log.acquire_lease(&lease_name, me, ttl, None).await {
                Ok(lease) if lease.holder == *me => true,
                Ok(lease) if holder_died_here(&lease.holder, me) => log
                    .acquire_lease(&lease_name, me, ttl, Some(&lease.holder))
                    .await
                    .is_ok_and(|l| l.holder == *me),
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(unit, error = %e, "renewing a unit's lease failed");
                    running && renewed.elapsed() < ttl * 2 / 3
                }
            };
            if held {
                renewed = tokio::time::Instant::now();
                if !running {
                    tracing::info!(unit, "took the unit's lease; starting it");
                    change("acquired");
                    spawn_unit(app, unit, &mut tasks);
                }
            } else if running {
                tracing::error!(unit, "lost the unit's lease; stopping it and standing by");
                change("lost");
                tasks.shutdown().await;
            }
        }
        let running = !tasks.is_empty();
        tasks.shutdown().await;
        if running {
            if let Err(e) = log.release_lease(&lease_name, me).await {
                tracing::warn!(unit, error = %e, "releasing a unit's lease failed");
            }
        }
    }
}

/// Serves on `listener` until `shutdown` resolves, running the workers when the
/// roles include them.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (started, _) = tokio::sync::oneshot::channel();
    run_notify(app, listener, shutdown, started).await
}

/// As [`run`], telling `started` once the server serves (or why it will not: e.g.
/// another instance holds the workers lease).
pub async fn run_notify(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    started: tokio::sync::oneshot::Sender<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let ctx = app.ctx.clone();
    tasks.spawn(supervise("token_cache", move || {
        let ctx = ctx.clone();
        async move { ctx.tokens.run(ctx.store.clone(), ctx.log.clone()).await }
    }));
    let hub = app.hub.clone();
    tasks.spawn(supervise("event_hub", move || hub.clone().run()));
    // A rebuild that died with an earlier process left its shadow (on PostgreSQL
    // after a swap: tables the size of the read models): removed aside.
    let store = app.ctx.store.clone();
    tasks.spawn(async move {
        if let Err(e) = wabridge_projections::rebuild::remove_leftovers(&store).await {
            tracing::warn!(error = %format!("{e:#}"), "removing the shadows of rebuilds that did not finish failed");
        }
    });
    let workers = if app.cfg.roles.workers {
        match Workers::start(&app).await {
            Ok(w) => Some(w),
            Err(e) => {
                let _ = started.send(Err(anyhow::anyhow!("{e:#}")));
                return Err(e);
            }
        }
    } else {
        None
    };
    let _ = started.send(Ok(()));
    if app.cfg.roles.api {
        tasks.spawn(crate::security::run(app.clone()));
        let app2 = app.clone();
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if let Err(e) = app2.rejections.flush(&app2.ctx).await {
                    tracing::warn!(error = %e, "recording rate-limit refusals failed");
                }
            }
        });
        serve_http(&app, listener, shutdown).await;
        crate::security::flush(&app, true).await;
        if let Err(e) = app.rejections.flush(&app.ctx).await {
            tracing::warn!(error = %e, "recording rate-limit refusals failed");
        }
    } else {
        shutdown.await;
    }
    if let Some(w) = workers {
        w.stop().await;
    }
    tasks.shutdown().await;
    Ok(())
}

/// The accept loop: bounded connections, header timeout, graceful shutdown with a
/// deadline.
async fn serve_http(
    app: &App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    let router = crate::http::router(app.clone());
    let caps = crate::connections::ConnectionCaps::new(
        app.cfg.max_connections,
        app.cfg.max_connections_per_address,
        app.cfg.trusted_proxies.clone(),
    );
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(app.cfg.header_timeout)
        .max_buf_size(64 * 1024);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: pause rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let permit = match caps.admit(remote.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                app.metrics.count_refused_connection(why);
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                let mut router = router.clone();
                async move { router.call(req).await }
            });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
        // Reap finished connection tasks as we go.
        while connections.try_join_next().is_some() {}
    }
    tracing::info!("shutting down: finishing in-flight requests");
    if tokio::time::timeout(app.cfg.shutdown_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "shutdown deadline reached; closing the remaining connections"
        );
    }
    connections.shutdown().await;
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
