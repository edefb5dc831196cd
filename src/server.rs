//! Serving: the HTTP API on a given listener, and the workers (projections and
//! reactors), with graceful shutdown that lets in-flight appends finish.

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use tokio::{net::TcpListener, task::JoinSet};
use wabridge_handlers::{redrive, webhooks::processor};
use wabridge_projections::{views, ProjectionRunner};

use crate::app::App;

/// Starts every projection, the webhook processor and the periodic jobs.
pub fn spawn_workers(app: &App, tasks: &mut JoinSet<()>) {
    let runner = ProjectionRunner {
        log: app.ctx.log.clone(),
        store: app.ctx.store.clone(),
        progress: app.ctx.progress.clone(),
    };
    // Every read model lives in one database: one consumer and one transaction per
    // batch for all of them (each keeps its own checkpoint).
    tasks.spawn(supervise("projections", move || {
        runner.clone().run_group(views::all())
    }));
    let ctx = app.ctx.clone();
    tasks.spawn(supervise(processor::NAME, move || {
        processor::run(ctx.clone())
    }));
    let ctx = app.ctx.clone();
    tasks.spawn(supervise(redrive::NAME, move || {
        redrive::run(ctx.clone(), views::all())
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

/// Serves on `listener` until `shutdown` resolves, running the workers when the
/// roles include them.
pub async fn run(
    app: App,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let mut tasks = JoinSet::new();
    let ctx = app.ctx.clone();
    tasks.spawn(supervise("token_cache", move || {
        let ctx = ctx.clone();
        async move { ctx.tokens.run(ctx.store.clone(), ctx.log.clone()).await }
    }));
    if app.cfg.roles.workers {
        spawn_workers(&app, &mut tasks);
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    if app.cfg.roles.api {
        tasks.spawn(crate::security::run(app.clone()));
        let router = crate::http::router(app.clone());
        let stop2 = stop.clone();
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop2.notify_waiters();
        })
        .await?;
        crate::security::flush(&app, true).await;
    } else {
        shutdown.await;
    }
    tasks.shutdown().await;
    Ok(())
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
    tracing::info!("shutting down: finishing in-flight requests");
}
