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
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tower::Service;
use wabridge_handlers::{commands::WORKERS_LEASE, redrive, webhooks::processor};
use wabridge_projections::{projection, views, Driver, Reactor};

use crate::app::App;

/// Starts every follower (projections, webhook processor, redrive) and the periodic
/// jobs into `tasks`.
use wabridge_handlers::sender::{Sender, SenderConfig};

fn spawn_workers(app: &App, tasks: &mut JoinSet<()>) {
    let driver = Driver {
        log: app.ctx.log.clone(),
        store: app.ctx.store.clone(),
        progress: app.ctx.progress.clone(),
    };
    // Every read model lives in one database: one subscription and one transaction
    // per batch for all of them (each keeps its own checkpoint).
    let (d, keys) = (driver.clone(), app.projection_keys());
    tasks.spawn(supervise("projections", move || {
        let (d, keys) = (d.clone(), keys.clone());
        async move { d.run(&views::follower(&keys)).await }
    }));
    let (d, ctx) = (driver.clone(), app.ctx.clone());
    tasks.spawn(supervise(processor::NAME, move || {
        let (d, ctx) = (d.clone(), ctx.clone());
        async move { d.run(&processor::follower(ctx)).await }
    }));
    let (d, ctx, keys) = (driver.clone(), app.ctx.clone(), app.projection_keys());
    tasks.spawn(supervise(redrive::NAME, move || {
        let (d, ctx, keys) = (d.clone(), ctx.clone(), keys.clone());
        async move {
            let mut consumers = projection::reactors(views::all(&keys));
            consumers.push(Arc::new(processor::Processor::strict(ctx.clone())) as Arc<dyn Reactor>);
            d.run(&redrive::follower(ctx, d.clone(), consumers)).await
        }
    }));
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

/// The workers of this instance, run only while it holds the deployment's workers
/// lease: a second instance on the same log never runs them at the same time.
struct Workers {
    stop: Arc<tokio::sync::Notify>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Workers {
    /// Takes the lease (waiting out one lease period, in case its holder just died)
    /// and starts the workers; refuses when another live instance holds it.
    async fn start(app: &App) -> anyhow::Result<Workers> {
        let me = holder_id();
        let ttl = app.cfg.lease_ttl;
        let log = app.ctx.log.clone();
        let deadline = tokio::time::Instant::now() + ttl + Duration::from_secs(1);
        loop {
            let lease = log
                .acquire_lease(WORKERS_LEASE, &me, ttl, None)
                .await
                .context("taking the workers lease")?;
            if lease.holder == me {
                break;
            }
            if holder_died_here(&lease.holder, &me) {
                tracing::info!(previous = %lease.holder, "the last workers instance died here; taking over");
                let lease = log
                    .acquire_lease(WORKERS_LEASE, &me, ttl, Some(&lease.holder))
                    .await?;
                if lease.holder == me {
                    break;
                }
            }
            if tokio::time::Instant::now() >= deadline {
                anyhow::bail!(
                    "another wabridge instance ({}) runs the workers on this log (lease {WORKERS_LEASE:?} until {}); \
                     start this one with WABRIDGE_ROLES=api, or stop the other first",
                    lease.holder,
                    lease.expires_at
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        tracing::info!(holder = %me, "holding the workers lease");
        let stop = Arc::new(tokio::sync::Notify::new());
        let keeper = tokio::spawn(keep(app.clone(), me, stop.clone()));
        Ok(Workers { stop, keeper })
    }

    /// Stops the workers and releases the lease.
    async fn stop(self) {
        self.stop.notify_one();
        let _ = self.keeper.await;
    }
}

/// Runs the workers while the lease is held, renewing it; when it cannot be renewed
/// in time (another instance took it, or the log is unreachable) the workers stop at
/// once and this instance stands by until it can take the lease again.
async fn keep(app: App, me: String, stop: Arc<tokio::sync::Notify>) {
    let ttl = app.cfg.lease_ttl;
    let log = app.ctx.log.clone();
    let mut tasks = JoinSet::new();
    spawn_workers(&app, &mut tasks);
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.notified() => break,
            _ = tokio::time::sleep(ttl / 3) => {}
        }
        let held = match log.acquire_lease(WORKERS_LEASE, &me, ttl, None).await {
            Ok(lease) => lease.holder == me,
            Err(e) => {
                tracing::warn!(error = %e, "renewing the workers lease failed");
                renewed.elapsed() < ttl * 2 / 3
            }
        };
        if held {
            renewed = tokio::time::Instant::now();
            if tasks.is_empty() {
                tracing::info!("took the workers lease again; starting the workers");
                spawn_workers(&app, &mut tasks);
            }
        } else if !tasks.is_empty() {
            tracing::error!("lost the workers lease; stopping the workers and standing by");
            tasks.shutdown().await;
        }
    }
    tasks.shutdown().await;
    if let Err(e) = log.release_lease(WORKERS_LEASE, &me).await {
        tracing::warn!(error = %e, "releasing the workers lease failed");
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
    let limit = Arc::new(Semaphore::new(app.cfg.max_connections));
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
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            app.metrics.count_refused_connection();
            drop(stream);
            continue;
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
